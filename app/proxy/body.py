"""The client's request body on its way to a backend: one wrapper for all of it.

``request_body(environ, max_bytes)`` gives the request's ``RequestBody``: its framing as the
server parsed it (``length``: a ``Content-Length`` the proxy writes itself in place of the
client's; ``chunked``: re-chunked upstream, the upstream writer adding the one
``Transfer-Encoding: chunked``; neither: no body). Exactly one framing header reaches the
backend either way (STACK-FACTS 8), whatever the client's ``Connection`` names
(``http1.NEVER_HOP_BY_HOP``).

``RequestBody`` is the one place the body is read, counted and kept:

- it reads ``wsgi.input`` at most ``READ_SIZE`` bytes at a time, and only as an attempt
  sends them, so memory stays bounded whatever the size;
- it counts what it read (``received``, the access line's) against
  ``limits.max_body_bytes`` (413, even in the middle of a chunked body);
- it keeps a copy of a body up to ``REPLAY_LIMIT`` as it streams out, so a failed attempt
  can be replayed on another backend (``replayable``, ``attempt()``); a bigger one is
  streamed and never kept;
- with ``request_buffering``, it reads a chunked body whole (bounded) to send it with a
  length (``buffer``);
- whatever the input raises becomes a ``ClientError`` and marks the body
  ``client_failed``: the client's fault, never the backend's. Never an ``OSError``: a
  transport would take an ``ECONNRESET`` from the body for the backend's.

It knows nothing of backends or of which server runs the app.
"""
from __future__ import annotations

import socket
from typing import Iterator

from ..errors import BadRequest, BodyTooLarge, ClientError, ClientTimeout, ProxyError
from ..wire.http1 import READ_SIZE, Incomplete

REPLAY_LIMIT = 64 * 1024    # request bodies up to this size are kept for a replay


class RequestBody:
    """The request body, read only as the upstream send asks, kept while small.

    ``stream`` is the WSGI input (None: no body); ``length`` the parsed ``Content-Length``
    (None: chunked or none). ``prefetch()`` reads the first piece before any backend is
    contacted, so a body that is bad from its first byte (or an empty chunked one) never
    reaches one; it is also when a client waiting on ``Expect: 100-continue`` is told to
    go on. Each ``attempt()`` gives the body to send: the bytes kept so far, then the rest
    from the client.
    """

    def __init__(self, stream=None, length: int | None = None, chunked: bool = False,
                 max_bytes: int = 0, limit: int = REPLAY_LIMIT):
        self.length = length                  # the Content-Length to send, if any
        self.chunked = chunked
        self.received = 0                     # bytes read from the client so far
        self.client_failed = False            # reading from the client raised
        self._stream = stream
        self._remaining = None if chunked else length
        self._max_bytes = max_bytes
        self._limit = limit
        self._first: bytes | None = None      # the prefetched piece, not yet sent
        self._sent_any = False                # an attempt has taken a piece
        self._kept: bytearray | None = bytearray()   # None once the body outgrew the limit
        self._ended = stream is None

    @property
    def replayable(self) -> bool:
        """Whether another attempt can send the whole body again."""
        if self.client_failed:
            return False
        return not self._sent_any or self._kept is not None

    def prefetch(self) -> None:
        if self._stream is not None and self._first is None and not self._sent_any:
            self._first = self._read()

    def buffer(self, most: int) -> None:
        """Read a chunked body whole, up to ``most`` bytes (413 past it: memory stays
        bounded), to send it with ``Content-Length``: for backends that read only a length
        (``request_buffering``, nginx's ``proxy_request_buffering``). It is then kept, so it
        can always be replayed."""
        if not self.chunked or self._sent_any:
            return
        pieces, size = [], 0
        while True:
            if self._first is not None:
                piece, self._first = self._first, None
            else:
                piece = self._read()
            if not piece:
                break
            size += len(piece)
            if size > most:
                raise BodyTooLarge(f"the chunked request body is over {most} bytes "
                                   "(request_buffering)")
            pieces.append(piece)
        self.chunked, self.length, self._ended = False, size, True
        self._kept = bytearray().join(pieces)
        if not size:
            self._stream = None              # Content-Length: 0, nothing to send

    def attempt(self) -> Iterator[bytes] | None:
        """The body for the next attempt, or None when the request has none."""
        if self._stream is None:
            return None
        if not self.replayable:
            raise RuntimeError("the request body was sent and not kept; it cannot be replayed")
        return self._pieces()

    def _pieces(self) -> Iterator[bytes]:
        if self._kept:
            yield bytes(self._kept)
        while not self._ended:
            if self._first is not None:
                piece, self._first = self._first, None
            else:
                piece = self._read()
            if not piece:
                self._ended = True
                return
            self._sent_any = True
            if self._kept is not None:
                if len(self._kept) + len(piece) <= self._limit:
                    self._kept += piece
                else:
                    self._kept = None           # too big to keep: stream it only
            yield piece

    def _read(self) -> bytes:
        size = READ_SIZE if self._remaining is None else min(READ_SIZE, self._remaining)
        if size <= 0:
            return b""
        try:
            data = self._stream.read(size)
            if self._remaining is not None:
                if not data:
                    raise BadRequest("the client closed the connection before the whole body")
                self._remaining -= len(data)
            self.received += len(data)
            if self._max_bytes and self.received > self._max_bytes:
                raise BodyTooLarge(f"the request body is over {self._max_bytes} bytes")
        except Exception as error:  # noqa: BLE001 - every failure becomes a ClientError
            self.client_failed = True
            raise client_error(error) from error
        return data


NO_BODY = RequestBody()      # the body of every request without one (it keeps no state)


def request_body(environ: dict, max_bytes: int = 0) -> RequestBody:
    """The request's body as the server framed it: the length it parsed
    (``Content-Length: 0`` included, forwarded as sent), chunked, or none.

    A ``Content-Length`` over ``max_bytes`` is refused (413) before a byte is read.
    """
    length = environ.get("CONTENT_LENGTH")
    if length:
        size = int(length)
        if not size:
            return RequestBody(length=0)    # forwarded as sent
        if max_bytes and size > max_bytes:
            raise BodyTooLarge(f"the request body is over {max_bytes} bytes")
        return RequestBody(environ["wsgi.input"], size, max_bytes=max_bytes)
    if environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower() == "chunked":
        return RequestBody(environ["wsgi.input"], chunked=True, max_bytes=max_bytes)
    return NO_BODY


def client_error(error: BaseException) -> ClientError:
    """The typed error for a failure reading the client's body.

    Errors of our own pass through. Anything else came from the WSGI server's input (for
    example gunicorn's chunk parser); it is kept as ``server_error`` so the proxy can give
    it back to that server, which then answers it and closes the connection its own way.
    """
    if isinstance(error, ClientError):
        return error
    if isinstance(error, ProxyError):
        return BadRequest(error.detail)
    if isinstance(error, Incomplete):
        return BadRequest("the client closed the connection in the middle of the body")
    if isinstance(error, (socket.timeout, TimeoutError)):
        wrapped: ClientError = ClientTimeout("the client stopped sending its body")
    else:
        wrapped = BadRequest(f"invalid request body: {error or type(error).__name__}")
    wrapped.server_error = error
    return wrapped
