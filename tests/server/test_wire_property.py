"""A property over everything a client can send: what reaches a backend is exactly what the
proxy logged, framed as the client framed it.

Hypothesis generates request streams (one to three requests pipelined on one connection,
then a closing request): framing headers right and wrong, ``Connection`` lists naming any
field, chunk sizes zero-padded, upper-case or with extensions, bare CR or LF, obs-fold, odd
versions, blank lines, ``Expect``. Each stream goes through a real proxy to a backend that
reads every byte it receives with h11, a strict HTTP/1.1 parser that is not ours. The
property, under every server:

- every byte that reaches the backend parses, strictly, into whole requests (a request
  the proxy abandons part way may end early, never run into the next one);
- each request the backend completed is one the proxy logged (by its X-Request-ID), with
  the same method, target and body length, and one the client sent: h11, reading the
  client's own bytes, finds a request with that target, method and body;
- each request the proxy logged as answered by the backend reached it whole.

It is what would have found issue 22's hole (a ``Connection: Content-Length`` request's
body sent upstream unframed). Bounded: a fixed number of examples per server, derandomized,
so the suite stays deterministic.
"""
from __future__ import annotations

import re
import socket

import h11
import pytest
from gevent.server import StreamServer
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.backends import wait_until
from tests.conftest import base_config
from tests.servers import SERVERS, serving
from tests.rawclient import connect

EXAMPLES = 150
END = b"GET /end HTTP/1.1\r\nHost: end\r\nConnection: close\r\n\r\n"


class StrictBackend:
    """Reads each connection with h11 and answers every complete request ``200 ok``."""

    __test__ = False

    def __init__(self):
        self.complete: list[dict] = []      # requests read to their end
        self.errors: list[str] = []         # bytes a strict parser refused
        self.server = StreamServer(("127.0.0.1", 0), self._serve)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> "StrictBackend":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _serve(self, sock, _address) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = h11.Connection(h11.SERVER)
        request = None
        eof = False
        try:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as error:
                    if not eof:     # at EOF: a request the proxy abandoned part way
                        self.errors.append(f"{error}: {conn.trailing_data!r}")
                    return
                if event is h11.NEED_DATA:
                    data = sock.recv(65536)
                    eof = not data
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    request = {"method": event.method.decode(), "target": event.target.decode(
                        "latin-1"), "headers": [(n.decode(), v.decode("latin-1"))
                                                for n, v in event.headers.raw_items()],
                        "body": b""}
                elif isinstance(event, h11.Data):
                    request["body"] += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.complete.append(request)
                    out = conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                    if request["method"] != "HEAD":
                        out += conn.send(h11.Data(data=b"ok"))
                    out += conn.send(h11.EndOfMessage())
                    sock.sendall(out)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except OSError:
            return
        finally:
            sock.close()


def client_requests(data: bytes) -> list[tuple[str, str, bytes]]:
    """The requests h11 reads from the client's own bytes, up to the first it refuses."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    found, current = [], None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return found
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return found
        if isinstance(event, h11.Request):
            current = [event.method.decode(), event.target.decode("latin-1"), b""]
        elif isinstance(event, h11.Data):
            current[2] += event.data
        elif isinstance(event, h11.EndOfMessage):
            found.append(tuple(current))
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return found
            conn.start_next_cycle()


# --- what a client can send ---------------------------------------------------------------

CONNECTION_TOKENS = ["close", "keep-alive", "Content-Length", "content-length", "Transfer-Encoding",
                     "Host", "X-A", "TE", "Upgrade", "Expect", "Keep-Alive"]
FRAMINGS = ["none", "length", "chunked"]
# What may be wrong with a request: most are right, so that the requests behind them on the
# connection are read too; each wrong one is one of these.
MUTATIONS = ["none"] * 12 + [
    "version", "eol", "obs-fold", "space-before-colon", "no-host", "two-hosts", "bad-host",
    "short-length", "length-and-chunked", "length-twice", "lengths-differ", "odd-coding",
    "odd-length", "bad-chunk-size", "bad-trailer", "bad-value"]


@st.composite
def chunk_size_line(draw, size: int, wrong: bool = False) -> bytes:
    digits = b"%x" % size
    if draw(st.booleans()):
        digits = digits.upper()
    # Zero-padded past 16 digits, within h11's 20 (MyProxy takes any number).
    digits = b"0" * draw(st.sampled_from([0, 0, 0, 1, 5, 17])) + digits
    # No whitespace around the ";" of an extension: RFC 9112 §7.1.1 allows it (BWS), and
    # MyProxy takes it (and re-chunks the body upstream without extensions); h11 refuses it.
    extension = draw(st.sampled_from([b"", b"", b";a=b", b';name="q \\" x"', b";x"]))
    if wrong:
        return draw(st.sampled_from([b"+", b" ", b"-", b"0x", b""])) + digits + draw(
            st.sampled_from([b";", b"\x00", b" ", b";a=", b""]))
    return digits + extension


@st.composite
def chunked(draw, body: bytes, mutation: str) -> bytes:
    """``body`` chunk-encoded, cut into pieces the draw chooses, and the last chunk."""
    out, rest = b"", body
    wrong = mutation == "bad-chunk-size" and body
    while rest:
        size = draw(st.integers(min_value=1, max_value=len(rest)))
        piece, rest = rest[:size], rest[size:]
        out += draw(chunk_size_line(len(piece), wrong=bool(wrong))) + b"\r\n" + piece + b"\r\n"
        wrong = False
    last = draw(st.sampled_from([b"0", b"0", b"000", b"0;x=y"]))
    trailer = b"Bad Trailer\r\n" if mutation == "bad-trailer" else draw(
        st.sampled_from([b"", b"", b"X-T: 1\r\n"]))
    return out + last + b"\r\n" + trailer + b"\r\n"


@st.composite
def one_request(draw, index: int) -> bytes:
    method = draw(st.sampled_from(["POST", "PUT", "GET", "HEAD", "DELETE", "OPTIONS", "PATCH"]))
    mutation = draw(st.sampled_from(MUTATIONS))
    version = b"HTTP/1.1" if mutation != "version" else draw(st.sampled_from(
        [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1"]))
    # No raw bytes over 0x7f in the target: MyProxy forwards them as nginx does (a choice the
    # README states), while h11 refuses them.
    target = f"/r{index}".encode() + draw(st.sampled_from([b"", b"?q=1", b"/%2F..", b"/a;b=c"]))
    body = draw(st.binary(min_size=1, max_size=40)) if method in ("POST", "PUT", "PATCH") \
        else draw(st.binary(max_size=8))
    framing = draw(st.sampled_from(FRAMINGS))
    fields: list[bytes] = [{"no-host": b"X-No-Host: 1", "two-hosts": b"Host: a\r\nHost: b",
                            "bad-host": b"Host: " + draw(st.sampled_from([b"a b", b"[::1", b"a@b"]))}
                           .get(mutation, b"Host: a")]
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        tokens = draw(st.lists(st.sampled_from(CONNECTION_TOKENS), min_size=1, max_size=3))
        fields.append(b"Connection: " + ", ".join(tokens).encode())
    if draw(st.booleans()):
        fields.append(b"X-A: " + draw(st.sampled_from([b"1", b"a\tb", b"\xe9t\xe9", b""])))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        fields.append(b"Expect: 100-continue")
    if mutation == "obs-fold":
        fields.append(b"X-Folded: a\r\n b")
    elif mutation == "space-before-colon":
        fields.append(b"Content-Length : %d" % len(body))
    elif mutation == "bad-value":
        fields.append(b"X-B: " + draw(st.sampled_from([b"a\x00b", b"a\rb", b"a\x7fb", b"a\x0bb"])))
    payload = b""
    if mutation == "short-length":
        fields.append(b"Content-Length: %d" % (len(body) // 2))
        payload = body
    elif mutation == "length-and-chunked":
        fields += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
        payload = draw(chunked(body, mutation))
    elif mutation == "length-twice":
        fields += [b"Content-Length: %d" % len(body)] * 2
        payload = body
    elif mutation == "lengths-differ":
        fields += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
        payload = body
    elif mutation == "odd-coding":
        fields.append(b"Transfer-Encoding: " + draw(st.sampled_from(
            [b"Chunked", b" chunked", b"chunked, gzip", b"gzip, chunked", b"identity", b"chunked;"])))
        payload = draw(chunked(body, mutation))
    elif mutation == "odd-length":
        fields.append(b"Content-Length: " + draw(st.sampled_from(
            [b"+%d", b"0%d", b"%d ", b"%d,%d", b"0x%d"])).replace(b"%d", b"%d" % len(body)))
        payload = body
    elif framing == "length" or (framing == "none" and body and method in ("POST", "PUT")):
        fields.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked" or mutation in ("bad-chunk-size", "bad-trailer"):
        fields.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked(body, mutation))
    order = draw(st.permutations(range(len(fields))))
    lines = [b"%s %s %s" % (method.encode(), target, version)] + [fields[i] for i in order]
    eols = [b"\r\n"] * (len(lines) + 1)
    if mutation == "eol":
        eols[draw(st.integers(min_value=0, max_value=len(lines)))] = draw(
            st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]))
    head = b"".join(line + eol for line, eol in zip(lines, eols)) + eols[-1]
    return head + payload


@st.composite
def request_stream(draw) -> tuple[bytes, bytes]:
    """The bytes to send, and the same without the empty lines before each request line
    (which a server skips, RFC 9112 §2.2, and h11 does not), for h11 to read."""
    requests = [draw(one_request(index)) for index in range(draw(st.integers(1, 3)))]
    blanks = [b"\r\n" * draw(st.sampled_from([0, 0, 0, 1, 2])) for _ in requests]
    return (b"".join(blank + request for blank, request in zip(blanks, requests)) + END,
            b"".join(requests) + END)


# --- the property -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict_backend():
    backend = StrictBackend().start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, strict_backend, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [strict_backend.url], health_check={"enabled": False}, retries={"attempts": 1})) \
            as process:
        yield process


def send(port: int, data: bytes) -> None:
    """Send ``data`` and read until the proxy closes; a stream whose framing leaves the
    proxy waiting for more is half-closed after a bounded wait."""
    with connect(port, timeout=3) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return          # refused and closed before the client finished sending
        for _ in range(2):
            try:
                while sock.recv(65536):
                    pass
                return
            except socket.timeout:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return


FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def field_value(text: str):
    if text.startswith('"'):
        text = text[1:-1].replace('\\"', '"').encode("latin-1").decode("unicode_escape")
    return None if text == "-" else int(text) if text.isdigit() else text


def access_lines(proxy) -> dict[str, dict]:
    """The access lines so far, by request id, as ``{key: value}``."""
    lines = {}
    for line in list(proxy.lines):
        if "myproxy.access" in line and "request_id=" in line:
            entry = {key: field_value(value) for key, value in FIELD.findall(line)}
            lines[entry["request_id"]] = entry
    return lines


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(stream=request_stream())
def test_what_reaches_the_backend_is_what_the_proxy_logged_and_the_client_sent(
        proxy, strict_backend, stream):
    data, without_blank_lines = stream
    before, errors = len(strict_backend.complete), len(strict_backend.errors)
    send(proxy.port, data)
    assert strict_backend.errors[errors:] == []
    reached = [r for r in strict_backend.complete[before:] if r["target"] != "/end"]
    ids = [dict((n.lower(), v) for n, v in r["headers"])["x-request-id"] for r in reached]
    assert wait_until(lambda: all(i in access_lines(proxy) for i in ids), timeout=5), ids
    logged = access_lines(proxy)
    sent = {target: (method, body) for method, target, body in client_requests(without_blank_lines)}
    for request, request_id in zip(reached, ids):
        entry = logged[request_id]
        assert (entry["method"], entry["target"]) == (request["method"], request["target"])
        assert entry.get("bytes_in", 0) == len(request["body"])
        assert sent.get(request["target"]) == (request["method"], request["body"]), \
            f"the backend got a request the client did not send: {request}"
    answered = [entry for entry in logged.values() if entry.get("backend")
                and str(entry.get("status")).startswith("2") and entry["target"].startswith("/r")]
    reached_ids = {i for i in ids} | {i for i in (
        dict((n.lower(), v) for n, v in r["headers"]).get("x-request-id")
        for r in strict_backend.complete)}
    assert all(entry["request_id"] in reached_ids for entry in answered)
