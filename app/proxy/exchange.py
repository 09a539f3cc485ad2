"""One HTTP/1.1 request and response on a backend connection: the upstream codec.

``send_request`` writes the request as one head (``build_head``, through
``wire.http1.render_head``) and the body behind it, framed as the caller says.
``Response`` reads the response head with ``wire.http1.parse_response_head`` and streams
the body with the framing the head says (``wire.http1.response_framing``: none for
HEAD/1xx/204/304, chunked through ``wire.http1.ChunkedReader``, ``Content-Length``, or
until close). It gives
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
                          parse_response_head, render_head, response_framing)
from ..wire.gevent_adapter import send_all, set_timeout, wait_readable

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


def send_request(sock, method: str, target: str, headers, body, chunked: bool,
                 timeout: float | None) -> None:
    """Send the request (its head from ``build_head``) and the body; ``timeout`` is the
    socket's from now on (the pool's read timeout: each send and read waits that long at
    most). A reset while sending is swallowed: the backend may have answered already (an
    early 413, say), and reading the response tells."""
    head = build_head(method, target, headers, chunked, body is not None)
    set_timeout(sock, timeout)
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
        """``deadline``: the connection's ``gevent_adapter.ReadDeadline``, for the wait for the
        head (else the socket's own timeout bounds it)."""
        self._sock = sock
        self._release = release
        self._deadline = deadline
        self._buffer = b""
        self.complete = False         # the body was read to its end (or given up on)
        self.has_body = False         # a body follows the head (RFC 9112 §6.3)
        self._chunks: ChunkedReader | None = None
        status, self.reason, self.version, self.header_lines, framing = self._read_head(method)
        while 100 <= status < 200 and status != SWITCHING_PROTOCOLS:
            status, self.reason, self.version, self.header_lines, framing = self._read_head(method)
        # How the body is framed and whether the connection lasts (http1.response_framing).
        self.status = status
        self.has_body = framing.has_body
        self.length_remaining: int | None = framing.length
        self.connection_tokens = framing.tokens     # names the backend listed as hop-by-hop
        self._keep = framing.keep
        if status == SWITCHING_PROTOCOLS:
            # The connection now speaks another protocol: done here, and left to whoever
            # takes it over (``take_over``), or closed by ``close``.
            self.complete = True
        elif framing.chunked:
            self._chunks = ChunkedReader(self, UpstreamProtocolError)
        elif framing.length == 0:
            self._end()

    # The head -------------------------------------------------------------------------

    def _read_head(self, method: str):
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
        return status, reason, version, fields, response_framing(method, status, version, fields)

    # The body -------------------------------------------------------------------------

    def read1(self, size: int = READ_SIZE) -> bytes:
        """Up to ``size`` bytes of the body; b"" at its end. Raises ``UpstreamReset`` when
        the backend closes before the body's end, a socket timeout when it stalls."""
        if self.complete:
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
        buffer = self._buffer
        if self.complete or self._chunks is not None or not buffer:
            return b""
        left = self.length_remaining
        if left is not None:
            size = min(size, left)
        data, self._buffer = buffer[:size], buffer[size:]
        if left is not None:
            self.length_remaining = left = left - len(data)
            if left == 0:
                self._end()
        return data

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
        self.complete = True
        if self._buffer:
            self._keep = False       # bytes behind the response: the connection is not clean
        release, self._release = self._release, None
        if release is not None:
            release(self._keep)

    # For the callers ------------------------------------------------------------------

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
        self.complete, self._release = True, None
        buffered, self._buffer = self._buffer, b""
        return self._sock, buffered

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed, not reused."""
        self.complete = True
        release, self._release = self._release, None
        if release is not None:
            release(False)

    def release_conn(self) -> None:
        """After the body was read to its end this is a no-op; before, it closes."""
        self.close()
