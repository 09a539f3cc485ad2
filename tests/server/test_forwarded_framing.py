"""The framing a message is forwarded with is the proxy's own, under every server.

What ``Connection`` names is removed as hop-by-hop (RFC 9110 §7.6.1), but never the fields
that frame or address the message: a request's ``Content-Length`` is written by the proxy
from the framing it parsed, whatever ``Connection`` lists, and the client's ``Host`` stays.
Otherwise a body goes upstream unframed and the backend reads it as the next request on a
pooled connection, often another client's (issue 22's smuggling hole). The same holds for a
backend's response. Also here: the small framing cases the fuzzer found (blank lines before
a request line, no body after a HEAD's error answer, zero-padded chunk sizes).
"""
import pytest

from tests.conftest import base_config
from tests.rawbackend import RawBackend, read_until_closed, statuses
from tests.servers import SERVERS, serving
from tests.rawclient import connect, read_response, request

SMUGGLED = b"GET /steal HTTP/1.1\r\nX-Ignore: "


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, raw, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [raw.url], health_check={"enabled": False}, retries={"attempts": 1})) as process:
        yield process


def since(raw, before: int):
    return raw.received[before:]


@pytest.mark.parametrize("connection", ["Content-Length", "content-length, keep-alive",
                                        "Host, Content-Length", "Transfer-Encoding"])
def test_connection_naming_content_length_cannot_unframe_the_body(proxy, raw, connection):
    before = len(raw.received)
    data = (b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (connection.encode(), len(SMUGGLED), SMUGGLED))
    with connect(proxy.port) as sock:
        sock.sendall(data)
        status, _, _ = read_response(sock)
        assert status == 200
        # The next request on the same backend connection is a request of its own.
        sock.sendall(b"GET /account HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
        assert read_response(sock)[0] == 200
    seen = since(raw, before)
    assert [r.target for r in seen] == ["/a", "/account"]
    assert seen[0].values("Content-Length") == [str(len(SMUGGLED))]
    assert seen[0].values("Transfer-Encoding") == []
    assert seen[0].body == SMUGGLED
    assert seen[1].values("Host") == ["shop"]


def test_connection_naming_content_length_on_a_chunked_body_sends_it_chunked(proxy, raw):
    before = len(raw.received)
    status, _, _ = request(proxy.port, b"POST /c HTTP/1.1\r\nHost: a\r\nConnection: "
                           b"Content-Length, Transfer-Encoding, close\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert status == 200
    [seen] = since(raw, before)
    assert seen.values("Transfer-Encoding") == ["chunked"] and seen.values("Content-Length") == []
    assert seen.body == b"5\r\nhello\r\n0\r\n\r\n"


def test_connection_naming_host_keeps_the_clients_host(proxy, raw):
    before = len(raw.received)
    status, _, _ = request(proxy.port, b"GET /h HTTP/1.1\r\nHost: shop.example\r\n"
                           b"Connection: Host, close\r\n\r\n")
    assert status == 200
    [seen] = since(raw, before)
    assert seen.values("Host") == ["shop.example"]


def test_other_fields_connection_names_are_still_removed(proxy, raw):
    before = len(raw.received)
    status, _, _ = request(proxy.port, b"POST /x HTTP/1.1\r\nHost: a\r\nX-Hop: 1\r\nX-Keep: 2\r\n"
                           b"Connection: X-Hop, Content-Length, close\r\n"
                           b"Content-Length: 2\r\n\r\nhi")
    assert status == 200
    [seen] = since(raw, before)
    assert seen.values("X-Hop") == [] and seen.values("X-Keep") == ["2"]
    assert seen.values("Content-Length") == ["2"] and seen.body == b"hi"


def test_an_empty_content_length_is_forwarded_as_sent(proxy, raw):
    before = len(raw.received)
    status, _, _ = request(proxy.port, b"GET /z HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
                           b"Connection: Content-Length, close\r\n\r\n")
    assert status == 200
    [seen] = since(raw, before)
    assert seen.values("Content-Length") == ["0"]


@pytest.fixture(scope="module")
def unframing_backend():
    """Answers with Connection naming its own Content-Length, keeping the connection."""
    backend = RawBackend(lambda received: b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\n"
                         b"Content-Length: 5\r\n\r\nhello").start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy_to_unframing(request, unframing_backend, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [unframing_backend.url], health_check={"enabled": False})) as process:
        yield process


def test_a_backends_connection_cannot_unframe_its_response(proxy_to_unframing):
    with connect(proxy_to_unframing.port) as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"hello")
            assert headers.get("content-length") == "5"
            assert "transfer-encoding" not in headers


def test_blank_lines_before_a_request_line_are_skipped(proxy, raw):
    if proxy.kind == "gunicorn-gevent":
        pytest.skip("gunicorn's own parser reads the head there (it refuses them)")
    before = len(raw.received)
    status, _, _ = request(proxy.port, b"\r\n\r\n\r\nGET /blank HTTP/1.1\r\nHost: a\r\n"
                           b"Connection: close\r\n\r\n")
    assert status == 200
    assert [r.target for r in since(raw, before)] == ["/blank"]


def test_endless_blank_lines_are_refused(proxy, raw):
    if proxy.kind == "gunicorn-gevent":
        pytest.skip("gunicorn's own parser reads the head there")
    before = len(raw.received)
    with connect(proxy.port) as sock:
        sock.sendall(b"\r\n" * 20000 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = read_until_closed(sock)
    assert statuses(answer) == [400]
    assert since(raw, before) == []


@pytest.mark.parametrize("data", [b"HEAD / HTTP/1.1\r\n\r\n",
                                  b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n",
                                  b"HEAD /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"],
                         ids=["no-host", "cl-and-te", "long-target"])
def test_no_body_follows_the_answer_to_a_head(proxy, data):
    if proxy.kind == "gunicorn-gevent" and b"Host: a" in data:
        pytest.skip("gunicorn's own parser answers these itself, with a body")
    with connect(proxy.port) as sock:
        sock.sendall(data)
        answer = read_until_closed(sock)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4")
    assert rest == b""


def test_a_zero_padded_chunk_size_is_accepted(proxy, raw):
    before = len(raw.received)
    size = b"0" * 30 + b"5"
    status, _, _ = request(proxy.port, b"POST /pad HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n"
                           + b"0" * 20 + b"\r\n\r\n")
    assert status == 200
    [seen] = since(raw, before)
    assert seen.body == b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize("connection", ["close, close", "close, TE", "Keep-Alive, close"])
def test_no_request_is_served_after_one_that_says_close(proxy, raw, connection):
    before = len(raw.received)
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: %s\r\n\r\n"
                     b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n" % connection.encode())
        assert statuses(read_until_closed(sock)) == [200]
    assert [r.target for r in since(raw, before)] == ["/first"]
