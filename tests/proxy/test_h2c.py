"""h2c and the other upgrades that would carry HTTP past the proxy, under ``python wsgi.py``
and gunicorn: never tunnelled, forwarded as ordinary requests without ``Upgrade`` and
``HTTP2-Settings``, even to a backend that would switch (``tunnel.NEVER_TUNNELLED``)."""
import pytest

from tests.conftest import base_config
from tests.rawbackend import OK, RawBackend
from tests.servers import SERVERS, serving
from tests.rawclient import connect, request

SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"      # an empty HTTP/2 SETTINGS frame


def respond(received):
    """Switch to any protocol asked for, as an h2c-capable server (hypercorn) would; on
    ``/rogue-101``, switch unasked."""
    upgrade = received.values("Upgrade")
    if upgrade or received.target == "/rogue-101":
        name = upgrade[0] if upgrade else "h2c"
        return (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n"
                % name.encode() + SETTINGS_FRAME)
    return OK


@pytest.fixture(scope="module")
def raw():
    backend = RawBackend(respond).start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, raw, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [raw.url], health_check={"enabled": False}, retries={"attempts": 1})) as process:
        yield process


UPGRADES = {"h2c": "h2c", "upper-case": "H2C", "in-a-list": "websocket, h2c",
            "first-in-a-list": "h2c, foo/1", "http-2.0": "HTTP/2.0", "h2": "h2",
            "tls": "TLS/1.2"}


@pytest.mark.parametrize("upgrade", UPGRADES.values(), ids=UPGRADES.keys())
def test_an_upgrade_to_http_is_an_ordinary_request(proxy, raw, upgrade):
    status, headers, body = request(proxy.port, (
        f"GET /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        f"X-Kept: yes\r\n\r\n").encode())
    assert (status, body) == (200, b"ok")
    seen = raw.received[-1]
    assert seen.request_line == "GET /h2c HTTP/1.1"
    assert seen.values("Upgrade") == [] and seen.values("HTTP2-Settings") == []
    assert seen.values("Connection") == [] and seen.values("X-Kept") == ["yes"]
    line = proxy.wait_for(rf"myproxy.access request_id={headers['x-request-id']} .*").group(0)
    assert "status=200" in line


def test_http2_settings_never_reaches_a_backend(proxy, raw):
    status, _, _ = request(proxy.port, b"GET /settings HTTP/1.1\r\nHost: t\r\n"
                                       b"HTTP2-Settings: AAMAAABk\r\nConnection: close\r\n\r\n")
    assert status == 200 and raw.received[-1].values("HTTP2-Settings") == []


def test_any_other_protocol_is_still_tunnelled(proxy, raw):
    with connect(proxy.port, timeout=5) as sock:
        sock.sendall(b"GET /other HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                     b"Upgrade: foo/1\r\n\r\n")
        data = b""
        while SETTINGS_FRAME not in data:
            piece = sock.recv(65536)
            assert piece, data
            data += piece
    assert data.startswith(b"HTTP/1.1 101 ")
    assert raw.received[-1].values("Upgrade") == ["foo/1"]


def test_a_101_the_client_did_not_ask_for_is_502(proxy, raw):
    status, _, body = request(proxy.port, b"GET /rogue-101 HTTP/1.1\r\nHost: t\r\n"
                                          b"Connection: close\r\n\r\n")
    assert status == 502 and b"the backend failed" in body
    proxy.wait_for(r"upstream error: .*kind=invalid_response .*101 to a request that asked for no upgrade")
