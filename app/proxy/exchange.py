"""One HTTP/1.1 request and response on a backend connection: the upstream codec.

``send_request`` writes the request as one pre-built head (``build_head``, through
``wire.http1.render_head``) and the body behind it, framed as the caller says.
``Response`` reads the response head with ``wire.http1.parse_response_head`` and streams
the body with the framing the head says (RFC 9112 §6.3: none for HEAD/1xx/204/304,
chunked through ``wire.http1.ChunkedReader``, ``Content-Length``, or until close). It gives
the connection back (``release(True)``) only when the body was read to its end and the
connection may carry another request.

Failures are raised as the typed errors of ``errors`` (a reset, an invalid head); socket
errors and timeouts pass through for ``transport.classify``. It knows nothing of WSGI,
backends, pools or retries.
"""
from __future__ import annotations

import socket

from ..errors import UpstreamProtocolError, UpstreamReset
from ..wire.http1 import (LAST_CHUNK, READ_SIZE, ChunkedReader, Incomplete, encode_chunk,
                          list_tokens, parse_response_head, persists, render_head,
                          response_has_body)
from ..wire.sockets import send_all, wait_readable

MAX_HEAD_BYTES = 64 * 1024      # the status line and header lines together

# RFC 9110 §9.3.x: methods whose request carries content, so no body still means length 0
# (what a client library sends, so backends see the same request as before).
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
SWITCHING_PROTOCOLS = 101


def build_head(method: str, target: str, headers, chunked: bool, has_body: bool) -> bytes:
    """The request line and header lines as they go on the wire, plus the framing header a
    chunked body or an empty POST, PUT or PATCH needs."""
    if chunked:
        headers = [*headers, ("Transfer-Encoding", "chunked")]
    elif not has_body and method in METHODS_WITH_BODY and not any(
            name.lower() == "content-length" for name, _ in headers):
        headers = [*headers, ("Content-Length", "0")]
    return render_head(f"{method} {target} HTTP/1.1", headers)


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
        head (else the socket's own timeout bounds it)."""
        self._sock = sock
        self._release = release
        self._deadline = deadline
        self._buffer = b""
        self._done = False
        self._chunks: ChunkedReader | None = None
        self.status, self.reason, self.version, self.header_lines = self._read_head()
        while 100 <= self.status < 200 and self.status != SWITCHING_PROTOCOLS:
            self.status, self.reason, self.version, self.header_lines = self._read_head()
        self._frame(method)

    # The head -------------------------------------------------------------------------

    def _read_head(self):
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and not buffer and self._deadline is not None:
            # The request was just sent: its answer is not in yet (a plain connection; a
            # TLS one may hold decrypted bytes its descriptor does not show).
            wait_readable(self._sock, self._deadline)
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
        version, status, reason, fields = parse_response_head(buffer[:end + 2])
        return status, reason, version, fields

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
        self.length_remaining: int | None = None
        status = self.status
        if status == SWITCHING_PROTOCOLS:
            # The connection now speaks another protocol: done here, and left to whoever
            # takes it over (``take_over``), or closed by ``close``.
            self.length_remaining, self._keep, self._done = 0, False, True
            return
        if not response_has_body(method, status):
            self.length_remaining = 0
        elif codings is not None:
            self._keep = False       # RFC 9112 §6.3: with Transfer-Encoding, Content-Length is ignored
            if codings.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self._chunks = ChunkedReader(self, UpstreamProtocolError)
                self._keep = persistent and not lengths
        elif lengths:
            length = lengths.pop()
            if lengths or not length.strip().isdigit():
                raise UpstreamProtocolError("invalid response: bad Content-Length")
            self.length_remaining = int(length)
        else:
            self._keep = False       # read until the backend closes
        if self.length_remaining == 0 and self._chunks is None:
            self._end()

    # The body -------------------------------------------------------------------------

    def read1(self, size: int = READ_SIZE) -> bytes:
        """Up to ``size`` bytes of the body; b"" at its end. Raises ``UpstreamReset`` when
        the backend closes before the body's end, a socket timeout when it stalls."""
        if self._done:
            return b""
        if self._chunks is not None:
            try:
                data = self._chunks.read(size)
            except Incomplete:
                raise UpstreamReset("the response body ended early") from None
            if not data:
                self._end()
            return data
        left = self.length_remaining
        if left is not None:
            size = min(size, left)
        data = self.read(size)
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
        if self._done or self._chunks is not None or not self._buffer:
            return b""
        return self.read1(size)

    # The connection's bytes, as a reader (for ChunkedReader) ---------------------------

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the connection: what is buffered, else one receive."""
        buffer = self._buffer
        if buffer:
            data, self._buffer = buffer[:size], buffer[size:]
            return data
        return self._sock.recv(size)

    def readline(self, limit: int) -> bytes:
        """Bytes up to and including the next LF, at most ``limit``; fewer at EOF."""
        while True:
            buffer = self._buffer
            end = buffer.find(b"\n", 0, limit)
            if end >= 0 or len(buffer) >= limit:
                cut = end + 1 if end >= 0 else limit
                line, self._buffer = buffer[:cut], buffer[cut:]
                return line
            data = self._sock.recv(READ_SIZE)
            if not data:
                self._buffer = b""
                return buffer
            self._buffer = buffer + data

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

    def take_over(self) -> tuple[socket.socket, bytes]:
        """The connection itself and the bytes read past the head (a ``101``'s tunnel
        starts with them); nothing of it goes back to a pool."""
        self._done, self._release = True, None
        buffered, self._buffer = self._buffer, b""
        return self._sock, buffered

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed, not reused."""
        self._done = True
        release, self._release = self._release, None
        if release is not None:
            release(False)

    def release_conn(self) -> None:
        """After the body was read to its end this is a no-op; before, it closes."""
        self.close()
