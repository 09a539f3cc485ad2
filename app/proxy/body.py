"""The client's request body on its way to a backend: framing, the size limit, client errors.

``request_body(environ, max_bytes)`` says how the body goes upstream, as the
``http1.Framing`` the server parsed: with a ``Content-Length`` of the parsed length, which
the proxy writes itself in place of the client's, re-chunked when the client sent it
chunked (the upstream writer adds the one ``Transfer-Encoding: chunked``), or not at all.
Exactly one framing header reaches the backend either way (STACK-FACTS 8), whatever the
client's ``Connection`` names (``http1.NEVER_HOP_BY_HOP``).

``RequestBody`` reads ``wsgi.input`` at most ``CHUNK_SIZE`` bytes at a time, so memory
stays bounded whatever the size; counts against ``limits.max_body_bytes`` (413, even in
the middle of a chunked body); and turns whatever the input raises into a
``ClientError``. Never an ``OSError``: urllib3 takes an ``ECONNRESET`` from the body it is
sending for the backend's and goes on to wait for a response. It knows nothing of
backends or of which server runs the app.
"""
from __future__ import annotations

import socket
from typing import Iterator

from ..errors import BadRequest, BodyTooLarge, ClientError, ClientTimeout, ProxyError
from ..wire.http1 import Framing, Incomplete

CHUNK_SIZE = 64 * 1024       # bytes read from the client per read


class RequestBody:
    """The request body as an iterable of pieces, read only as the upstream send asks.

    ``prefetch()`` reads the first piece before any backend is contacted, so a body that is
    bad from its first byte (or an empty chunked one) never reaches one; it is also when a
    client waiting on ``Expect: 100-continue`` is told to go on. ``started`` says whether
    iteration began: until then the body can still be sent to another backend.
    """

    def __init__(self, stream, length: int | None, max_bytes: int = 0):
        self._stream = stream
        self._remaining = length      # None: chunked, read until the input says it ended
        self._max_bytes = max_bytes
        self._first: bytes | None = None
        self.received = 0

    def prefetch(self) -> None:
        if self._first is None:
            self._first = self._read()

    def __iter__(self) -> Iterator[bytes]:
        if self._first is not None:
            first, self._first = self._first, None
            if not first:
                return
            yield first
        while True:
            data = self._read()
            if not data:
                return
            yield data

    def _read(self) -> bytes:
        size = CHUNK_SIZE if self._remaining is None else min(CHUNK_SIZE, self._remaining)
        if size <= 0:
            return b""
        try:
            data = self._stream.read(size)
        except Exception as error:  # noqa: BLE001 - every failure becomes a ClientError
            raise client_error(error) from error
        if self._remaining is not None:
            if not data:
                raise BadRequest("the client closed the connection before the whole body")
            self._remaining -= len(data)
        self.received += len(data)
        if self._max_bytes and self.received > self._max_bytes:
            raise BodyTooLarge(f"the request body is over {self._max_bytes} bytes")
        return data


NO_FRAMING = Framing()
CHUNKED = Framing(chunked=True)


def request_body(environ: dict, max_bytes: int = 0) -> tuple[RequestBody | None, Framing]:
    """The body to send upstream (None for none), and its framing: the length the
    server parsed (``Content-Length: 0`` included, forwarded as sent), chunked, or none.

    A ``Content-Length`` over ``max_bytes`` is refused (413) before a byte is read.
    """
    length = environ.get("CONTENT_LENGTH")
    if length:
        size = int(length)
        if not size:
            return None, Framing(length=0)
        if max_bytes and size > max_bytes:
            raise BodyTooLarge(f"the request body is over {max_bytes} bytes")
        return RequestBody(environ["wsgi.input"], size, max_bytes), Framing(length=size)
    if environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower() == "chunked":
        return RequestBody(environ["wsgi.input"], None, max_bytes), CHUNKED
    return None, NO_FRAMING


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
