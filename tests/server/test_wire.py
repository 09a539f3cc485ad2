"""Transparency on the wire, under ``python wsgi.py`` and gunicorn: what the backend receives
byte for byte, and what the client gets back.

The backend records the exact bytes of every request and answers by path (after the
``/base`` prefix of its configured URL); the client sends exact bytes over a real socket.
"""
import gzip
import re

import gevent
import pytest
from gevent.event import Event

from tests.backends import wait_until
from tests.conftest import base_config
from tests.rawbackend import CLOSE, OK, RawBackend, read_until_closed, statuses
from tests.servers import SERVERS, serving
from tests.rawclient import connect, read_response, request

GZIPPED = gzip.compress(b"hello gzip " * 100)


def respond(received, release: Event):
    path = received.target.removeprefix("/base")
    if path == "/gzip":
        return b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
            len(GZIPPED), GZIPPED)
    if path == "/repeated":
        return (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nX-Multi: 1\r\n"
                b"Set-Cookie: b=2; Path=/\r\nX-Multi: 2\r\nContent-Length: 2\r\n\r\nok")
    if path == "/hop-by-hop":
        return (b"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: 1\r\n"
                b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\n"
                b"X-Kept: yes\r\nContent-Length: 2\r\n\r\nok")
    if path == "/own-headers":
        return (b"HTTP/1.1 200 OK\r\nServer: SimpleHTTP/0.6\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT"
                b"\r\nTrailers: x\r\nContent-Length: 2\r\n\r\nok")
    if path in ("/stream-until-close", "/stream-chunked"):
        return _stream(path == "/stream-chunked", release)
    if path == "/truncated-length":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", CLOSE]
    if path == "/truncated-chunked":
        return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", CLOSE]
    if path == "/chunked":
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    if path == "/chunked-and-length":
        return (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n")
    if path == "/head":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
    if path in ("/204", "/304"):
        return b"HTTP/1.1 %s X\r\nContent-Length: 0\r\n\r\n" % path[1:].encode()
    return OK


def _stream(chunked: bool, release: Event):
    frame = (lambda data: b"%x\r\n%s\r\n" % (len(data), data)) if chunked else (lambda d: d)
    yield (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
           + (b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n") + b"\r\n")
    yield frame(b"data: first\n\n")
    release.wait(timeout=10)
    release.clear()
    yield frame(b"data: second\n\n")
    yield b"0\r\n\r\n" if chunked else CLOSE


@pytest.fixture(scope="module")
def raw():
    release = Event()
    backend = RawBackend(lambda received: respond(received, release)).start()
    backend.release = release
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, raw, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [raw.url + "/base"], health_check={"enabled": False}, retries={"attempts": 1})) as process:
        yield process


def send(proxy, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    return request(proxy.port, head.encode("latin-1") + body, head=head.startswith("HEAD "))


def get(proxy, target: str, headers: str = "") -> tuple[int, dict, bytes]:
    return send(proxy, f"GET {target} HTTP/1.1\r\nHost: example.test\r\n{headers}"
                       f"Connection: close\r\n\r\n")


TARGETS = ["/a%2Fb", "/%2e%2e/secret", "/x/../y", "//double//slash", "/bare?", "/p;a=b;c",
           "/a+b?c+d=e+f", "/caf\xc3\xa9?q=\xc3\xa9", "/bad%zz?x=%20&y=%2F", "/?%00"]


@pytest.mark.parametrize("target", TARGETS, ids=["pct-2F", "pct-dot-dot", "dot-dot", "double-slash",
                                                 "bare-question-mark", "params", "plus",
                                                 "raw-utf8", "malformed-pct", "pct-00"])
def test_target_reaches_the_backend_byte_for_byte(proxy, raw, target):
    status, _, _ = get(proxy, target)
    if proxy.kind == "gunicorn-gevent" and "\xc3" in target:
        assert status == 400           # gunicorn's parser refuses raw bytes >= 0x80 in a target
        return
    assert status == 200
    assert raw.received[-1].head.startswith(f"GET /base{target} HTTP/1.1\r\n".encode("latin-1"))


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "PROPFIND", "DELETE", "PURGE"])
def test_method_passes_as_sent(proxy, raw, method):
    assert send(proxy, f"{method} /m HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == 200
    assert raw.received[-1].request_line == f"{method} /base/m HTTP/1.1"


def test_options_asterisk_passes_as_sent(proxy, raw):
    assert send(proxy, "OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == 200
    assert raw.received[-1].request_line == "OPTIONS * HTTP/1.1"


def test_header_order_and_case_are_kept(proxy, raw):
    get(proxy, "/h", "X-First: 1\r\nx-MiXeD-case: 2\r\nX-Last: 3\r\n")
    names = [name for name, _ in raw.received[-1].headers if name.lower().startswith("x-")]
    sent = ["X-First", "x-MiXeD-case", "X-Last"]
    if proxy.kind == "gunicorn-gevent":
        sent = [name.title() for name in sent]          # gunicorn upper-cases names
    assert names[:3] == sent


def test_repeated_request_headers(proxy, raw):
    get(proxy, "/h", "X-Rep: a\r\nX-Rep: b\r\n")
    expected = ["a,b"] if proxy.kind == "gunicorn-gevent" else ["a", "b"]   # gunicorn joins them
    assert raw.received[-1].values("X-Rep") == expected


def test_repeated_response_headers_stay_separate_lines(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /repeated HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head = read_until_closed(sock).split(b"\r\n\r\n")[0]
    assert head.count(b"\r\nSet-Cookie: ") == 2 and head.count(b"\r\nX-Multi: ") == 2


def test_hop_by_hop_request_headers_are_removed(proxy, raw):
    get(proxy, "/h", "Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: 5\r\n"
                     "TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic eA==\r\n"
                     "Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n")
    names = {name.lower() for name, _ in raw.received[-1].headers}
    assert not names & {"connection", "x-private", "keep-alive", "te", "trailer",
                        "proxy-connection"}
    assert raw.received[-1].values("X-Kept") == ["yes"]
    # Not hop-by-hop in RFC 9110 (§7.6.1, §11.7.2): for whoever is behind the proxy.
    assert raw.received[-1].values("Proxy-Authorization") == ["Basic eA=="]


def test_hop_by_hop_response_headers_are_removed(proxy):
    status, headers, _ = get(proxy, "/hop-by-hop")
    assert status == 200 and headers["x-kept"] == "yes"
    assert not set(headers) & {"x-private", "keep-alive", "trailer"}


def test_proxy_authenticate_is_relayed(proxy):
    status, headers, _ = get(proxy, "/hop-by-hop")
    assert status == 200
    if proxy.kind == "gunicorn-gevent":
        # gunicorn's util.hop_headers drops it from every app response (STACK-FACTS 26):
        # the stock worker's limit, in the README; MyProxy's worker relays it.
        assert "proxy-authenticate" not in headers
        return
    assert headers["proxy-authenticate"] == "Basic"


def test_backend_server_date_and_trailers_reach_the_client(proxy):
    status, headers, _ = get(proxy, "/own-headers")
    own = {name: headers.get(name) for name in ("server", "date", "trailers")}
    if proxy.kind == "gunicorn-gevent":      # gunicorn's util.hop_headers (STACK-FACTS 26)
        assert own["server"] == "gunicorn" and own["trailers"] is None
        return
    assert own == {"server": "SimpleHTTP/0.6", "date": "Mon, 01 Jan 2001 00:00:00 GMT",
                   "trailers": "x"}


def test_start_up_log_names_the_backends(proxy, raw):
    proxy.wait_for(re.escape(f"listening on http://127.0.0.1:{proxy.port} backends={raw.url}/base "))


def test_nothing_is_added_but_forwarding_headers(proxy, raw):
    get(proxy, "/h")
    names = [name for name, _ in raw.received[-1].headers]
    assert sorted(names) == sorted(["Host", "X-Forwarded-For", "X-Forwarded-Proto",
                                    "X-Forwarded-Host", "X-Request-ID", "Via"])


def test_untrusted_client_cannot_spoof_forwarding_headers(proxy, raw):
    status, headers, _ = get(proxy, "/h", "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n"
                                          "X-Forwarded-Proto: https\r\nX-Request-ID: spoofed\r\n"
                                          "X_Forwarded_For: 7.7.7.7\r\n")
    seen = raw.received[-1]
    assert seen.values("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.values("X-Forwarded-Host") == ["example.test"]
    assert seen.values("X-Forwarded-Proto") == ["http"]
    assert seen.values("X-Request-ID") == [headers["x-request-id"]] != ["spoofed"]
    assert seen.values("X_Forwarded_For") == []
    assert seen.values("Host") == ["example.test"]


@pytest.mark.parametrize("version,via", [("HTTP/1.1", "1.1 myproxy"), ("HTTP/1.0", "1.0 myproxy")])
def test_via_names_the_protocol_received(proxy, raw, version, via):
    send(proxy, f"GET /h {version}\r\nHost: t\r\nVia: 1.1 edge\r\nConnection: close\r\n\r\n")
    assert raw.received[-1].values("Via") in (["1.1 edge", via], [f"1.1 edge,{via}"])


def test_request_id_is_sent_returned_and_logged(proxy, raw):
    _, headers, _ = get(proxy, "/logged")
    request_id = headers["x-request-id"]
    assert raw.received[-1].values("X-Request-ID") == [request_id]
    line = proxy.wait_for(rf"myproxy.access request_id={request_id} .*").group(0)
    assert "target=/logged" in line and "status=200" in line


def test_content_length_body_streams_with_one_framing_header(proxy, raw):
    body = bytes(range(256)) * 1200
    status, _, _ = send(proxy, f"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
                               f"Connection: close\r\n\r\n", body)
    seen = raw.received[-1]
    assert status == 200 and seen.body == body
    assert seen.values("Content-Length") == [str(len(body))] and seen.values("Transfer-Encoding") == []


def test_chunked_body_is_rechunked_with_one_framing_header(proxy, raw):
    chunks = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    status, _, _ = send(proxy, "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                               "Connection: close\r\n\r\n", chunks)
    seen = raw.received[-1]
    assert status == 200 and seen.complete
    assert seen.values("Transfer-Encoding") == ["chunked"] and seen.values("Content-Length") == []
    assert _dechunk(seen.body) == b"hello world" and b"X-Trailer" not in seen.body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]


def test_request_body_streams_before_the_client_finishes(proxy, raw):
    first, rest = b"a" * 100_000, b"b" * 100_000
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /slow-upload HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n"
                     b"Connection: close\r\n\r\n" + first)
        # The backend has the request before the client sent the rest of the body.
        assert wait_until(lambda: raw.received and raw.received[-1].target == "/base/slow-upload")
        sock.sendall(rest)
        assert read_response(sock)[0] == 200
    assert raw.received[-1].body == first + rest


def test_expect_100_continue(proxy, raw):
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /expect HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        assert statuses(read_until_closed(sock)) == [200]
    assert raw.received[-1].body == b"hello" and raw.received[-1].values("Expect") == []


def test_compressed_body_is_untouched(proxy):
    status, headers, body = send(proxy, "GET /gzip HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n"
                                        "Connection: close\r\n\r\n")
    assert (status, body) == (200, GZIPPED)
    assert headers["content-encoding"] == "gzip" and headers["content-length"] == str(len(GZIPPED))


@pytest.mark.parametrize("path", ["/stream-until-close", "/stream-chunked"])
def test_response_without_length_streams_unbuffered(proxy, raw, path):
    with connect(proxy.port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        seen = b""
        with gevent.Timeout(10):
            while b"data: first" not in seen:     # arrives while the backend still holds on
                seen += sock.recv(65536)
        raw.release.set()
        seen += read_until_closed(sock)
    assert b"data: second" in seen


@pytest.mark.parametrize("request_head,path", [
    ("HEAD /head HTTP/1.1", "/head"), ("GET /204 HTTP/1.1", "/204"), ("GET /304 HTTP/1.1", "/304"),
], ids=["head", "204", "304"])
def test_no_body_responses_keep_the_connection_in_sync(proxy, request_head, path):
    with connect(proxy.port) as sock:
        sock.sendall(f"{request_head}\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n"
                     f"Connection: close\r\n\r\n".encode())
        data = read_until_closed(sock)
    assert statuses(data) == [int(path[1:]) if path != "/head" else 200, 200]
    assert data.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize("path", ["/truncated-length", "/truncated-chunked"])
def test_body_cut_short_by_the_backend_never_looks_complete(proxy, path):
    with connect(proxy.port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        data = read_until_closed(sock)            # the proxy closes the connection
    head, _, body = data.partition(b"\r\n\r\n")
    assert statuses(head) == [200]
    if b"content-length: 100" in head.lower():
        assert len(body) < 100
    else:
        assert not body.endswith(b"0\r\n\r\n")


def test_chunked_response_with_a_length_is_sent_with_one_framing(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /chunked-and-length HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    head = data.split(b"\r\n\r\n")[0].lower()
    assert b"content-length" not in head and b"transfer-encoding: chunked" in head
    assert _dechunk(data.split(b"\r\n\r\n", 1)[1]) == b"hello"


def test_an_http_1_0_client_that_asks_for_keep_alive_gets_close_for_a_body_of_no_known_length(proxy):
    """HTTP/1.0 has no chunked coding: a body whose length the backend did not give (it sent
    it chunked) is delimited by the end of the connection, so the connection closes, and
    the head says so, whatever the client asked."""
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /chunked HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        data = read_until_closed(sock, timeout=5)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0].split()[1] == b"200" and body == b"hello"
    assert b"connection: close" in lines and b"connection: keep-alive" not in lines
    assert not any(line.startswith((b"content-length", b"transfer-encoding")) for line in lines)


def test_an_http_1_0_client_gets_close_by_default_and_keep_alive_when_it_asks(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /a HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection", "").lower() == "keep-alive"
        sock.sendall(b"GET /b HTTP/1.0\r\nHost: t\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection", "close").lower() == "close"
        assert read_until_closed(sock, timeout=5) == b""
