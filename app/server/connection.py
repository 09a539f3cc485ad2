"""What the client connection's handler (``app.server.handler.Handler``) uses beside
itself, and MyProxy's gunicorn worker too:

- ``header_deadline``: each connection's ``timeouts.client_header`` up to
  ``HEADER_JITTER`` shorter, and ``SlowHeads``, which counts the connections closed for a
  slow head into one log line a second, so a slowloris burst neither stalls nor floods;
- ``RequestInput``, ``wsgi.input``: exactly the framed body, strictly de-chunked, with
  ``100 Continue`` sent when the body is first read; ``EMPTY_INPUT`` for a request with
  no body;
- how long a refused connection lingers (``LINGER_SECONDS``, ``LINGER_BYTES``).

It knows nothing of the application, draining, or signals.
"""
from __future__ import annotations

import logging
import random
import socket
from typing import Callable

import gevent

from ..wire import http1
from ..errors import ClientTimeout
from ..logs import Fields

log = logging.getLogger("myproxy.server")

# After refusing a request, read and drop what the client still sends for this long (at
# most this much), so it reads our answer rather than a reset: nginx's lingering close.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"     # RFC 9110 §15.2.1
# Each connection's head deadline is up to this share shorter than client_header, at
# random: thousands of slowloris connections opened in one burst then time out over a
# spread (10 s: over 0.5 s) instead of in one turn of the event loop, where closing them
# all held every other request for 450 ms. Never longer than client_header.
HEADER_JITTER = 0.05
# Connections closed for a slow head are logged as one line per this many seconds, with
# a count: a slowloris burst of thousands wrote one line each.
SLOW_HEAD_LOG_EVERY = 1.0
SLOW_HEAD_SAMPLE = 5        # client addresses named in that line, at most


def header_deadline(seconds: float, rand: Callable[[], float] = random.random) -> float:
    """``timeouts.client_header`` for one connection, less up to ``HEADER_JITTER`` of it."""
    return seconds * (1.0 - HEADER_JITTER * rand())


class SlowHeads:
    """Counts the connections closed because their head did not come in time, and logs
    them as one line a second at most: ``closed 2700 connection(s) that sent no complete
    request head within 10.0s: clients=...``. One per server."""

    def __init__(self, logger: logging.Logger = log, every: float = SLOW_HEAD_LOG_EVERY):
        self._log = logger
        self._every = every
        self._count = 0
        self._clients: list[str] = []
        self._within = 0.0
        self._flush = None

    def closed(self, client: str, within: float) -> None:
        self._count += 1
        self._within = within
        if len(self._clients) < SLOW_HEAD_SAMPLE and client not in self._clients:
            self._clients.append(client)
        if self._flush is None:
            self._flush = gevent.get_hub().loop.timer(self._every)
            self._flush.start(self.flush)

    def flush(self) -> None:
        """Write the line for the closes counted so far, if any."""
        if self._flush is not None:
            self._flush.close()
            self._flush = None
        if self._count:
            count, clients, self._count, self._clients = self._count, self._clients, 0, []
            self._log.info(Fields(f"closed {count} connection(s) that sent no complete request "
                                  f"head within {self._within:.1f}s",
                                  clients=",".join(clients) + (",..." if count > len(clients)
                                                               else "")))


class RequestInput:
    """``wsgi.input`` for one request: exactly the framed body, read strictly.

    A chunked body goes through ``http1.ChunkedReader``. ``100 Continue`` is sent on the
    first read, that is when the proxy starts reading the body, never before.
    ``finished`` says whether the body was read to its end; if not, the connection cannot
    carry another request and is closed. A client that stops sending raises
    ``ClientTimeout`` (after ``client_idle``, the socket's timeout while a request runs).
    """

    def __init__(self, rfile, framing: http1.Framing, continue_socket=None):
        self._rfile = rfile
        self._chunks = http1.ChunkedReader(rfile) if framing.chunked else None
        self._left = framing.length or 0
        self._continue_socket = continue_socket

    @property
    def finished(self) -> bool:
        return self._chunks.done if self._chunks is not None else self._left == 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(http1.READ_SIZE), b""))
        if self.finished or size == 0:
            return b""
        try:
            if self._continue_socket is not None:
                sock, self._continue_socket = self._continue_socket, None
                sock.sendall(CONTINUE)
            if self._chunks is not None:
                return self._chunks.read(size)
            data = self._rfile.read(min(size, self._left))
        except (socket.timeout, TimeoutError):
            raise ClientTimeout("the client stopped sending its body") from None
        if not data:
            raise http1.Incomplete("connection closed in the middle of the body")
        self._left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        line = b""
        while not line.endswith(b"\n") and (size is None or size < 0 or len(line) < size):
            data = self.read(1)
            if not data:
                break
            line += data
        return line

    def __iter__(self):
        return iter(self.readline, b"")


class _NoBody:
    """``wsgi.input`` of a request without a body: read to its end from the start. One for
    every such request (it keeps no state)."""

    finished = True

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""

    def __iter__(self):
        return iter(())


EMPTY_INPUT = _NoBody()
