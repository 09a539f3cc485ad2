"""Strict framing, limits and no open proxy, on the wire, under ``python wsgi.py`` and gunicorn.

Each malformed request is sent as exact bytes with a good request pipelined behind it: the
client gets one error response and a closed connection, and the backend (which records
every byte it receives) never sees either request. A tripwire listener fails the test if
the proxy ever connects anywhere but its backend.
"""
import pytest

from tests.backends import wait_until
from tests.conftest import base_config
from tests.rawbackend import RawBackend, Tripwire, read_until_closed, statuses
from tests.servers import SERVERS, serving
from tests.rawclient import connect, read_response, request

PIPELINED = b"GET /pipelined HTTP/1.1\r\nHost: t\r\n\r\n"
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 128 * 1024


@pytest.fixture(scope="module")
def raw():
    backend = RawBackend().start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def tripwire():
    listener = Tripwire().start()
    yield listener
    listener.stop()
    assert listener.hits == 0, "the proxy connected to a host that is not a backend"


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, raw, tripwire, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [raw.url], health_check={"enabled": False}, retries={"attempts": 1},
            limits={"max_header_bytes": MAX_HEADER_BYTES, "max_body_bytes": MAX_BODY_BYTES})) as process:
        yield process


def refused(proxy, raw, data: bytes) -> list[int]:
    """Send ``data`` then a pipelined good request; return the statuses received before the
    proxy closed the connection, checking that the backend saw nothing."""
    before = len(raw.received)
    with connect(proxy.port) as sock:
        sock.sendall(data + PIPELINED)
        answer = read_until_closed(sock)
    assert len(raw.received) == before, raw.received[before:]
    return statuses(answer)


def assert_never_completed(raw, before: int) -> None:
    """The request the backend began to receive since ``before`` was cut off mid-body."""
    assert wait_until(lambda: len(raw.received) > before
                      and all(r.ended for r in raw.received[before:]), timeout=10)
    assert [r.complete for r in raw.received[before:]] == [False]


HEAD = b"POST / HTTP/1.1\r\nHost: t\r\n"

# (id, request bytes, {server: status} where a server answers differently from 400)
AMBIGUOUS = [
    ("cl-and-te", HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {}),
    ("te-and-cl", HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", {}),
    ("repeated-cl-same", HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", {}),
    ("repeated-cl-differ", HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", {}),
    ("cl-list", HEAD + b"Content-Length: 5, 5\r\n\r\nhello", {}),
    ("cl-plus-sign", HEAD + b"Content-Length: +5\r\n\r\nhello", {}),
    ("cl-underscore", HEAD + b"Content-Length: 1_1\r\n\r\nhello world", {}),
    ("cl-hex", HEAD + b"Content-Length: 0x5\r\n\r\nhello", {}),
    ("cl-negative", HEAD + b"Content-Length: -1\r\n\r\n", {}),
    ("te-gzip-chunked", HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", {}),
    ("te-chunked-twice", HEAD + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", {}),
    ("te-repeated", HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {}),
    ("te-identity", HEAD + b"Transfer-Encoding: identity\r\n\r\n", {}),
    ("te-unknown", HEAD + b"Transfer-Encoding: xchunked\r\n\r\n", {"gunicorn-gevent": 501}),
    ("te-suffix", HEAD + b"Transfer-Encoding: chunkedx\r\n\r\n", {"gunicorn-gevent": 501}),
    ("te-quoted", HEAD + b'Transfer-Encoding: "chunked"\r\n\r\n', {"gunicorn-gevent": 501}),
    # gunicorn's own parser gives no answer at all and keeps the connection open.
    ("cl-too-large", HEAD + b"Content-Length: " + b"9" * 30 + b"\r\n\r\n",
     {"gunicorn-gevent": None}),
    ("te-vertical-tab", HEAD + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", {}),
    ("te-chunked-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {}),
    ("space-before-colon", HEAD + b"Content-Length : 5\r\n\r\nhello", {}),
    ("obs-fold", HEAD + b"X-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n", {}),
    ("bad-header-name", HEAD + b"X@A: 1\r\n\r\n", {}),
    ("space-in-header-name", HEAD + b"X A: 1\r\n\r\n", {}),
    ("header-without-colon", HEAD + b"NoColon\r\n\r\n", {}),
    ("empty-header-name", HEAD + b": x\r\n\r\n", {}),
    ("bare-cr-in-value", HEAD + b"X-A: a\rb\r\n\r\n", {}),
    ("bare-cr-in-request-line", b"GET /\r HTTP/1.1\r\nHost: t\r\n\r\n", {}),
    ("nul-in-value", HEAD + b"X-A: a\x00b\r\n\r\n", {}),
    ("bare-lf", b"GET / HTTP/1.1\nHost: t\n\n", {}),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", {}),
    ("bad-version", b"GET / HTTP/1.x\r\nHost: t\r\n\r\n", {}),
    ("http2-version", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", {"wsgi.py": 505, "gunicorn": 505}),
    ("chunk-size-not-hex", HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", {}),
    # gunicorn reads chunk sizes of any length; the body is re-chunked upstream, so nothing
    # ambiguous reaches a backend, and max_body_bytes still bounds it.
    ("chunk-size-too-big", HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\n",
     {"gunicorn-gevent": None}),
    ("chunk-without-crlf", HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", {}),
    ("chunk-size-bare-lf", HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", {}),
]


@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in AMBIGUOUS],
                         ids=[case for case, _, _ in AMBIGUOUS])
def test_ambiguous_request_is_refused_and_closes_the_connection(proxy, raw, data, expected):
    status = expected.get(proxy.kind, 400)
    if status is None:
        pytest.skip(f"{proxy.kind} accepts this; see the comment on the case")
    assert refused(proxy, raw, data) == [status]


def test_te_with_connection_close_closes_after_the_response(proxy, raw):
    with connect(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nConnection: TE, close\r\n\r\n")
        assert statuses(read_until_closed(sock, timeout=5)) == [200]


def test_a_good_request_pipelined_behind_a_good_one_is_served(proxy, raw):
    with connect(proxy.port) as sock:
        sock.sendall(HEAD + b"Content-Length: 5\r\n\r\nhello" + PIPELINED.replace(
            b"Host: t", b"Host: t\r\nConnection: close"))
        assert statuses(read_until_closed(sock)) == [200, 200]
    assert [r.target for r in raw.received[-2:]] == ["/", "/pipelined"]


def test_invalid_chunk_mid_body_never_completes_a_request(proxy, raw):
    before = len(raw.received)
    with connect(proxy.port) as sock:
        big = b"d" * 70000            # more than the proxy reads before contacting a backend
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\nzz\r\n"
                     % (len(big), big) + PIPELINED)
        assert statuses(read_until_closed(sock)) == [400]
    assert_never_completed(raw, before)


def test_request_line_over_the_limit_is_414(proxy, raw):
    assert refused(proxy, raw, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n") == [414]


def test_headers_over_max_header_bytes_are_431(proxy, raw):
    fields = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(20))
    before = len(raw.received)
    status, _, body = request(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    assert status == 431 and len(raw.received) == before


def test_one_header_line_over_max_header_bytes_is_431(proxy, raw):
    before = len(raw.received)
    status, _, _ = request(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: "
                           + b"b" * MAX_HEADER_BYTES + b"\r\n\r\n")
    assert status == 431 and len(raw.received) == before


def test_more_than_100_header_lines_are_431_without_a_traceback(proxy, raw):
    fields = b"".join(b"X-H%d: 1\r\n" % i for i in range(100))
    assert refused(proxy, raw, b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n") == [431]
    assert "Traceback" not in proxy.output


def test_exactly_100_header_lines_are_served(proxy, raw):
    fields = b"".join(b"X-H%d: 1\r\n" % i for i in range(99))
    status, _, _ = request(proxy.port, b"GET /hundred HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    assert status == 200 and raw.received[-1].target == "/hundred"


def test_missing_host_is_400(proxy, raw):
    before = len(raw.received)
    assert request(proxy.port, b"GET / HTTP/1.1\r\n\r\n")[0] == 400
    assert len(raw.received) == before


def test_body_over_max_body_bytes_is_413_before_it_is_read(proxy, raw):
    before = len(raw.received)
    with connect(proxy.port) as sock:
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
        status, headers, body = read_response(sock)
    assert status == 413 and b"over" in body
    assert len(raw.received) == before


def test_body_of_exactly_max_body_bytes_is_forwarded(proxy, raw):
    body = b"b" * MAX_BODY_BYTES
    status, _, _ = request(proxy.port, HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert status == 200 and raw.received[-1].body == body


def test_chunked_body_over_max_body_bytes_is_413_mid_stream(proxy, raw):
    before = len(raw.received)
    piece = b"c" * 16384
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(10))
    with connect(proxy.port) as sock:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        assert statuses(read_until_closed(sock)) == [413]
    assert_never_completed(raw, before)


# --- no open proxy ------------------------------------------------------------------------

def test_absolute_form_target_goes_to_the_backend_as_a_path(proxy, raw, tripwire):
    elsewhere = f"127.0.0.1:{tripwire.port}".encode()
    status, _, body = request(proxy.port, b"GET http://" + elsewhere + b"/x?y=%2F HTTP/1.1\r\n"
                              b"Host: ignored\r\nConnection: close\r\n\r\n")
    assert (status, body) == (200, b"ok")
    seen = raw.received[-1]
    assert seen.target == "/x?y=%2F"
    assert seen.values("Host") == [elsewhere.decode()]
    assert tripwire.hits == 0


@pytest.mark.parametrize("target", ["//{trip}/path", "/@{trip}/", "/http://{trip}/"],
                         ids=["double-slash", "at-host-path", "url-in-path"])
def test_targets_naming_another_host_stay_paths(proxy, raw, tripwire, target):
    target = target.format(trip=f"127.0.0.1:{tripwire.port}")
    status, _, _ = request(proxy.port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{tripwire.port}"
                           f"\r\nConnection: close\r\n\r\n".encode())
    assert status == 200 and raw.received[-1].target == target
    assert tripwire.hits == 0


@pytest.mark.parametrize("target", ["@{trip}/", "{trip}", "http://user@{trip}/", "ftp://{trip}/"],
                         ids=["at-host", "authority-form", "userinfo", "other-scheme"])
def test_targets_that_are_not_paths_are_400(proxy, raw, tripwire, target):
    target = target.format(trip=f"127.0.0.1:{tripwire.port}")
    assert refused(proxy, raw, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode()) == [400]
    assert tripwire.hits == 0


def test_connect_is_405(proxy, raw, tripwire):
    data = f"CONNECT 127.0.0.1:{tripwire.port} HTTP/1.1\r\nHost: 127.0.0.1:{tripwire.port}\r\n\r\n"
    assert refused(proxy, raw, data.encode()) == [405]
    assert tripwire.hits == 0


def test_no_100_continue_for_a_body_that_is_refused(proxy, raw):
    before = len(raw.received)
    with connect(proxy.port) as sock:
        sock.sendall(HEAD + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                     % (MAX_BODY_BYTES + 1))
        answer = statuses(read_until_closed(sock))
    # gunicorn sends its 100 Continue before the app runs; python wsgi.py only when the
    # proxy starts reading the body, which a refused body never gets to.
    assert answer == ([100, 413] if proxy.kind == "gunicorn-gevent" else [413])
    assert len(raw.received) == before
