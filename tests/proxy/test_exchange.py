"""The upstream codec (app.exchange) through Upstream.send, against raw backends on real
sockets: response framing, keep-alive reuse, strict heads, and the request as sent."""
import pytest

from app.config import TimeoutsConfig
from app.errors import UpstreamError, UpstreamProtocolError, UpstreamReset
from tests.rawbackend import CLOSE, OK, RawBackend
from tests.proxy.test_tunnel_inprocess import certificate, tls_backend  # noqa: F401 - fixtures


@pytest.fixture
def raw():
    backends = []

    def start(respond):
        backend = RawBackend(respond).start()
        backends.append(backend)
        return backend

    yield start
    for backend in backends:
        backend.stop()


def upstream_for(url):
    from app.proxy.transport import Upstream
    return Upstream(timeout=TimeoutsConfig(connect=3, read=2))


def fetch(upstream, url, method="GET", target="/", body=None, chunked=False, headers=None):
    response = upstream.send(url, method, target, list((headers or {"Host": "b"}).items()), body,
                             chunked)
    data = b""
    while True:
        piece = response.read1(7)
        if not piece:
            break
        data += piece
    response.release_conn()
    return response, data


@pytest.mark.parametrize("answer,body,reuses", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\n",
     b"hello", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello", b"hello", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"", True),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", b"", False),
], ids=["content-length", "chunked-with-trailer", "connection-close", "http-1.0", "http-1.0-keep-alive",
        "interim-100-skipped", "204", "304-with-length", "101-never-pooled"])
def test_framed_responses_are_read_whole_and_kept_alive_when_allowed(raw, answer, body, reuses):
    backend = raw(lambda received: answer)
    upstream = upstream_for(backend.url)
    for _ in range(2):
        _, data = fetch(upstream, backend.url)
        assert data == body
    assert backend.connections == (1 if reuses else 2)


def test_a_body_read_until_close_is_whole_and_the_connection_not_reused(raw):
    backend = raw(lambda received: [b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"closed", CLOSE])
    upstream = upstream_for(backend.url)
    response, data = fetch(upstream, backend.url)
    assert data == b"until closed" and response.length_remaining is None
    assert fetch(upstream, backend.url)[1] == b"until closed" and backend.connections == 2


def test_head_responses_have_no_body_whatever_their_length(raw):
    backend = raw(lambda received: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    upstream = upstream_for(backend.url)
    assert fetch(upstream, backend.url, "HEAD")[1] == b""
    assert fetch(upstream, backend.url, "HEAD")[1] == b"" and backend.connections == 1


@pytest.mark.parametrize("answer", [
    [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", CLOSE],
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", CLOSE],
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", CLOSE],
], ids=["short-content-length", "mid-chunk", "no-last-chunk"])
def test_a_truncated_body_raises_and_never_looks_complete(raw, answer):
    backend = raw(lambda received: answer)
    response = upstream_for(backend.url).send(backend.url, "GET", "/", [("Host", "b")])
    with pytest.raises(UpstreamReset, match="ended early"):
        while response.read1(3):
            pass
    assert not response.complete


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\nInjected: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rInjected: b\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\nX: y\r\n\r\n",
], ids=["two-lengths", "signed-length", "space-in-name", "obs-fold", "bare-lf", "bare-cr", "version",
        "status", "lf-in-reason"])
def test_an_invalid_head_is_a_protocol_error(raw, answer):
    backend = raw(lambda received: answer)
    with pytest.raises(UpstreamProtocolError):
        upstream_for(backend.url).send(backend.url, "GET", "/", [("Host", "b")])


def test_a_bad_chunk_size_is_a_protocol_error(raw):
    backend = raw(lambda received: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    response = upstream_for(backend.url).send(backend.url, "GET", "/", [("Host", "b")])
    with pytest.raises(UpstreamProtocolError):
        response.read1(10)


def test_the_request_goes_out_byte_for_byte_with_its_framing(raw):
    backend = raw(lambda received: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    upstream = upstream_for(backend.url)
    fetch(upstream, backend.url, "GET", "/a%2Fb?x=%zz&é".encode().decode("latin-1"),
          headers={"Host": "b", "X-Two": "1"})
    fetch(upstream, backend.url, "POST", "/p", body=iter([b"ab", b"cd"]), chunked=True)
    fetch(upstream, backend.url, "POST", "/e")
    fetch(upstream, backend.url, "PUT", "/l", body=[b"xyz"], headers={"Host": "b", "Content-Length": "3"})
    first, chunked, empty, sized = backend.received
    assert first.head == "GET /a%2Fb?x=%zz&é HTTP/1.1\r\nHost: b\r\nX-Two: 1\r\n\r\n".encode()
    assert chunked.values("Transfer-Encoding") == ["chunked"] and chunked.body == b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"
    assert empty.values("Content-Length") == ["0"] and empty.values("Transfer-Encoding") == []
    assert sized.values("Content-Length") == ["3"] and sized.body == b"xyz"
    assert backend.connections == 1


def test_https_backends_verify_certificates(tls_backend):  # noqa: F811
    with pytest.raises(UpstreamError) as caught:
        upstream_for(tls_backend.url).send(tls_backend.url, "GET", "/", [("Host", "b")])
    assert "certificate" in caught.value.detail.lower() or "TLS" in caught.value.detail


@pytest.mark.parametrize("host, looked_up", [("127.0.0.1", False), ("localhost", True)])
def test_a_backend_given_by_address_is_connected_to_without_a_lookup(raw, monkeypatch, host,
                                                                     looked_up):
    # gevent runs each lookup in its thread pool; a burst of them stalled new connections.
    import socket
    backend = raw(lambda received: OK)
    url = backend.url.replace("127.0.0.1", host)
    lookups, real = [], socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kw: lookups.append(args) or real(*args, **kw))
    upstream = upstream_for(url)
    assert fetch(upstream, url)[0].status == 200
    assert bool(lookups) is looked_up


def test_a_refused_connection_to_an_address_is_a_connect_error():
    from app.errors import UpstreamConnectError
    from tests.backends import free_port
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UpstreamConnectError):
        fetch(upstream_for(url), url)


def test_response_fields_are_taken_as_sent_less_ows(raw):
    backend = raw(lambda received: b"HTTP/1.1 204 No Content\r\nX-A:\t a b \t\r\nX-Empty:\r\n"
                                   b"X-Obs: caf\xe9\r\nX-A: 2\r\n\r\n")
    response = upstream_for(backend.url).send(backend.url, "GET", "/", [("Host", "b")])
    assert response.header_lines == [("X-A", "a b"), ("X-Empty", ""), ("X-Obs", "caf\xe9"),
                                     ("X-A", "2")]


def test_a_response_with_too_many_header_lines_is_a_protocol_error(raw):
    backend = raw(lambda received: b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 +
                  b"Content-Length: 0\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        upstream_for(backend.url).send(backend.url, "GET", "/", [("Host", "b")])
