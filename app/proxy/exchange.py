"""One HTTP/1.1 request and response on a pooled upstream connection, without http.client.

``Upstream.send`` takes a connection from the session adapter's urllib3 pool and hands it
here for ``http://`` backends: the request goes out as one pre-built head (and the body
behind it, framed as the caller says), and the response head is read by a small strict
parser instead of ``http.client`` and the ``email`` package, which were a third of the
proxy's CPU per request. ``Response`` streams the body with the framing the head says
(RFC 9112 §6.3: none for HEAD/1xx/204/304, chunked, ``Content-Length``, or until close)
and gives the connection back to its pool only when the body was read to its end and
the connection may carry another request.

Failures are raised as the typed errors of ``errors`` (a reset, a timeout, an invalid
head); the caller marks whether the connection was a reused one. It knows nothing of
WSGI, backends or retries.
"""
from __future__ import annotations

import re
import socket

from ..errors import UpstreamProtocolError, UpstreamReset
from ..wire.http1 import (LAST_CHUNK, MAX_CHUNK_SIZE_LINE, TCHAR, chunk_size, list_tokens,
                            encode_chunk, persists, response_has_body)
from ..wire.sockets import send_all, wait_readable

MAX_HEAD_BYTES = 64 * 1024      # the status line and header lines together
MAX_HEADER_LINES = 100          # as http.client
READ_SIZE = 64 * 1024           # bytes asked of the socket per recv

# RFC 9110 §9.3.x: methods whose request carries content, so no body still means length 0
# (what urllib3 sends, so backends see the same request as before).
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
SWITCHING_PROTOCOLS = 101

# A field line: a token (RFC 9110 §5.6.2), a colon, a value without CR or LF, CRLF. No two
# parts can match the same bytes, so neither pattern backtracks.
_FIELD_LINE = rb"(" + TCHAR.encode() + rb"+):([^\r\n]*)\r\n"
_FIELD = re.compile(_FIELD_LINE)
_VALID_FIELDS = re.compile(rb"(?:" + _FIELD_LINE + rb")*")
# The same line as text, to take checked lines apart after one decode of them all.
_FIELD_TEXT = re.compile(_FIELD_LINE.decode("latin-1"))


def build_head(method: str, target: str, headers, chunked: bool, has_body: bool) -> bytes:
    """The request line and header lines, as the bytes that go on the wire (latin-1: the
    target is the client's bytes decoded as latin-1)."""
    fields = "".join([": ".join(pair) + "\r\n" for pair in headers])
    if chunked:
        fields += "Transfer-Encoding: chunked\r\n"
    elif not has_body and method in METHODS_WITH_BODY and not any(
            name.lower() == "content-length" for name, _ in headers):
        fields += "Content-Length: 0\r\n"
    return f"{method} {target} HTTP/1.1\r\n{fields}\r\n".encode("latin-1")


def send_request(sock, head: bytes, body, chunked: bool) -> None:
    """Send the head and the body. A reset while sending is swallowed: the backend may
    have answered already (an early 413, say), and reading the response tells."""
    try:
        if body is None:
            send_all(sock, head)
            return
        first = True
        for piece in body:
            if not piece:
                continue
            if chunked:
                piece = encode_chunk(piece)
            if first:
                piece, first = head + piece, False
            send_all(sock, piece)
        if first:
            send_all(sock, head + LAST_CHUNK if chunked else head)
        elif chunked:
            send_all(sock, LAST_CHUNK)
    except (BrokenPipeError, ConnectionResetError):
        pass


class Response:
    """The response of a backend on one connection: status, reason, header lines, and a
    body read with ``read1`` as its framing says.

    ``release`` is called with True once the connection may serve another request, with
    False when it must be closed instead.
    """

    def __init__(self, sock, method: str, release, deadline=None):
        """``deadline``: the connection's ``sockets.ReadDeadline``, for the wait for the
        head (else gevent makes a timer of the socket's timeout for it)."""
        self._sock = sock
        self._release = release
        self._deadline = deadline
        self._buffer = b""
        self._done = False
        self.status, self.reason, self.version, self.header_lines = self._read_head()
        while 100 <= self.status < 200 and self.status != SWITCHING_PROTOCOLS:
            self.status, self.reason, self.version, self.header_lines = self._read_head()
        self._frame(method)

    # The head -------------------------------------------------------------------------

    def _read_head(self):
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and not buffer:
            wait_readable(self._sock, self._deadline)   # the request was just sent: not in yet
        while end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise UpstreamProtocolError("invalid response: the head is too long")
            data = self._sock.recv(READ_SIZE)
            if not data:
                if buffer:
                    raise UpstreamReset("connection reset: the head ended early")
                raise UpstreamReset("connection reset: remote end closed connection without response")
            buffer += data
            end = buffer.find(b"\r\n\r\n", max(0, len(buffer) - len(data) - 3))
        self._buffer = buffer[end + 4:]
        first = buffer.find(b"\r\n")
        status_line = buffer[:first]
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() \
                or b"\n" in reason or b"\r" in reason:
            raise UpstreamProtocolError(f"invalid response: bad status line {status_line[:100]!r}")
        # The field lines, each with its CRLF: checked by one match, taken apart by another.
        if first == end:
            fields = []
        elif _VALID_FIELDS.fullmatch(buffer, first + 2, end + 2) is None:
            raise UpstreamProtocolError("invalid response: bad header line " + repr(next(
                line for line in buffer[first + 2:end].split(b"\r\n")
                if not _FIELD.fullmatch(line + b"\r\n"))[:100]))
        else:
            fields = [(name, value.strip(" \t")) for name, value
                      in _FIELD_TEXT.findall(buffer[first + 2:end + 2].decode("latin-1"))]
        if len(fields) > MAX_HEADER_LINES:
            raise UpstreamProtocolError("invalid response: too many header lines")
        return int(code), reason.decode("latin-1"), version, fields

    def _frame(self, method: str) -> None:
        """Decide from the head how the body is framed and whether the connection lasts."""
        codings, lengths, connection = None, set(), []
        for name, value in self.header_lines:
            lower = name.lower()
            if lower == "content-length":
                lengths.add(value)
            elif lower == "transfer-encoding":
                codings = f"{codings}, {value}" if codings else value
            elif lower == "connection":
                connection.append(value)
        # What the Connection lines list (http1.connection_tokens), from the same pass.
        tokens = list_tokens(",".join(connection))
        self.connection_tokens = tokens      # names the backend listed as hop-by-hop
        persistent = persists(self.version == b"HTTP/1.0", tokens)
        self._keep = persistent
        self._chunked = False
        self.length_remaining: int | None = None
        status = self.status
        if not response_has_body(method, status):
            self.length_remaining = 0
            if status == SWITCHING_PROTOCOLS:
                self._keep = False   # the connection now speaks another protocol
        elif codings is not None:
            self._keep = False       # RFC 9112 §6.3: with Transfer-Encoding, Content-Length is ignored
            if codings.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self._chunked, self._chunk_left = True, 0
                self._keep = persistent and not lengths
        elif lengths:
            length = lengths.pop()
            if lengths or not length.strip().isdigit():
                raise UpstreamProtocolError("invalid response: bad Content-Length")
            self.length_remaining = int(length)
        else:
            self._keep = False       # read until the backend closes
        if self.length_remaining == 0 and not self._chunked:
            self._end()

    # The body -------------------------------------------------------------------------

    def read1(self, size: int = READ_SIZE) -> bytes:
        """Up to ``size`` bytes of the body; b"" at its end. Raises ``UpstreamReset`` when
        the backend closes before the body's end, a socket timeout when it stalls."""
        if self._done:
            return b""
        if self._chunked:
            return self._read_chunked(size)
        left = self.length_remaining
        if left is not None:
            size = min(size, left)
        data = self._take(size)
        if not data:
            if left is None:
                self._end()
                return b""
            raise UpstreamReset("the response body ended early")
        if left is not None:
            left -= len(data)
            self.length_remaining = left
            if left == 0:
                self._end()
        return data

    def read_buffered(self, size: int = READ_SIZE) -> bytes:
        """``read1`` of what has arrived with the head already, never touching the socket:
        b"" when nothing of the body is buffered (a chunked body never is, here)."""
        if self._done or self._chunked or not self._buffer:
            return b""
        return self.read1(size)

    def _take(self, size: int) -> bytes:
        buffer = self._buffer
        if buffer:
            data, self._buffer = buffer[:size], buffer[size:]
            return data
        return self._sock.recv(size)

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
                return line
            if len(self._buffer) > MAX_CHUNK_SIZE_LINE:
                raise UpstreamProtocolError("invalid response: a chunk line is too long")
            data = self._sock.recv(READ_SIZE)
            if not data:
                raise UpstreamReset("the response body ended early")
            self._buffer += data

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            line = self._line()
            size = chunk_size(line)
            if size is None:
                raise UpstreamProtocolError(f"invalid response: bad chunk size {line[:20]!r}")
            self._chunk_left = size
            if self._chunk_left == 0:
                while self._line():        # trailer fields: dropped (hop-by-hop here)
                    pass
                self._end()
                return b""
        data = self._take(min(size, self._chunk_left))
        if not data:
            raise UpstreamReset("the response body ended early")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            if self._line():
                raise UpstreamProtocolError("invalid response: a chunk without its CRLF")
        return data

    def _end(self) -> None:
        self._done = True
        if self._buffer:
            self._keep = False       # bytes behind the response: the connection is not clean
        release, self._release = self._release, None
        if release is not None:
            release(self._keep)

    # For the callers ------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._done

    def drain_conn(self) -> None:
        """Read the rest of the body and drop it; errors just close the connection."""
        try:
            while self.read1(READ_SIZE):
                pass
        except (OSError, UpstreamReset, UpstreamProtocolError, socket.timeout):
            self.close()

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed, not reused."""
        self._done = True
        release, self._release = self._release, None
        if release is not None:
            release(False)

    def release_conn(self) -> None:
        """After the body was read to its end this is a no-op; before, it closes."""
        self.close()
