"""``request_buffering``: a chunked request body read whole (bounded) and sent upstream
with ``Content-Length``, for backends that read only a length (Python's ``http.server``,
many small WSGI servers), as nginx's ``proxy_request_buffering`` does. Per pool: a route
may set its own. Under every server."""
import pytest

from tests.conftest import base_config
from tests.servers import SERVERS, serving
from tests.rawclient import request

LIMIT = 1024


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, raw, tmp_path_factory):
    config = base_config([raw.url], health_check={"enabled": False}, retries={"attempts": 1},
                         request_buffering=LIMIT)
    config["routes"] = [{"name": "stream", "path": "/stream", "backends": [raw.url],
                         "request_buffering": 0}]
    with serving(request.param, tmp_path_factory, config) as process:
        yield process


def chunked(target: bytes, *chunks: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    return (b"POST %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%s" % (target, body))


def test_a_chunked_body_goes_upstream_whole_with_a_length(proxy, raw):
    before = len(raw.received)
    status, _, _ = request(proxy.port, chunked(b"/up", b"hello ", b"world"))
    assert status == 200
    [seen] = raw.received[before:]
    assert seen.values("Content-Length") == ["11"] and seen.values("Transfer-Encoding") == []
    assert seen.body == b"hello world"


def test_an_empty_chunked_body_goes_with_length_zero(proxy, raw):
    before = len(raw.received)
    assert request(proxy.port, chunked(b"/empty"))[0] == 200
    [seen] = raw.received[before:]
    assert seen.values("Content-Length") == ["0"] and seen.body == b""


def test_a_chunked_body_over_the_size_is_413_and_reaches_no_backend(proxy, raw):
    before = len(raw.received)
    status, _, body = request(proxy.port, chunked(b"/big", b"x" * 1000, b"y" * 100))
    assert status == 413
    assert b"request_buffering" in body or b"413" in body
    assert raw.received[before:] == []


def test_a_route_that_sets_zero_streams_chunked(proxy, raw):
    before = len(raw.received)
    assert request(proxy.port, chunked(b"/stream/x", b"x" * 2000))[0] == 200
    [seen] = raw.received[before:]
    assert seen.values("Transfer-Encoding") == ["chunked"] and seen.values("Content-Length") == []
