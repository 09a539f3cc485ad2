"""The client connection under ``python wsgi.py``: each request read strictly, and bounded.

``StrictConnection`` is a mixin for pywsgi's ``WSGIHandler`` (``app.server.standalone.Handler``). It
replaces pywsgi's lax request parsing (STACK-FACTS 15-19) with ``app.wire.http1`` and adds the
timeouts pywsgi lacks (STACK-FACTS 14):

- a new connection has ``timeouts.client_header`` to send its first request head; later,
  ``timeouts.client_idle`` to start the next one and then ``client_header`` to finish it
  (each deadline up to ``HEADER_JITTER`` shorter, and the closes counted by ``SlowHeads``
  into one log line a second, so a slowloris burst neither stalls nor floods);
- while a request runs, the socket's timeout is ``client_idle``: a client that stops
  sending its body (408) or reading the response is cut off;
- a malformed head, or one over the limits, is answered with its typed error's status
  (400, 405, 414, 431, 505) and the connection is closed after a bounded lingering read,
  so nothing pipelined behind it ever runs;
- ``RequestInput`` is ``wsgi.input``: exactly the framed body, strictly de-chunked, with
  ``100 Continue`` sent when the body is first read.

It knows the handler's socket, ``rfile`` and server (``limits``, ``timeouts``), nothing of
the application, draining, or signals.
"""
from __future__ import annotations

import logging
import random
import socket
from typing import Callable

import gevent

from ..wire import http1
from ..wire.responses import error_response, render_head
from ..wire.sockets import linger, set_timeout
from ..errors import ClientError, ClientTimeout
from ..logs import Fields
from .pywsgi_adapter import Input

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


class StrictConnection:
    """``WSGIHandler`` methods that read each request strictly and bound each wait."""

    served = 0           # requests answered on this connection
    head = None          # the http1.Head of the current request
    _head_timer = None
    _head_method = False  # the request being read is a HEAD: an answer to it has no body

    def _client(self) -> str:
        address = self.client_address
        return address[0] if isinstance(address, tuple) else str(address)

    def handle_one_request(self):
        """Read one request head strictly and answer the request; None closes the connection.

        Replaces pywsgi's version, which parses laxly and lets errors from reading the
        request line escape. A malformed head is answered with its typed error's status
        (``_refuse``) and the connection closed; a head slower than ``client_header`` or a
        client gone mid-head just closes it.
        """
        if self.rfile.closed:
            return None
        # The settings in force for this request (a reload changes them at the next one).
        self._limits, self._timeouts = self.server.limits, self.server.timeouts
        timeouts = self._timeouts
        self._head_timer = None
        if not self.served:              # a new connection: client_header for its first head
            self._head_timer = gevent.Timeout.start_new(header_deadline(timeouts.client_header))
        try:
            self.requestline = self.read_requestline()
            if not self.requestline:
                return None
            self.read_request(self.requestline)
        except ClientError as error:
            return self._refuse(error)
        except gevent.Timeout as timeout:
            if timeout is not self._head_timer:
                raise
            slow_heads = getattr(self.server, "slow_heads", None)
            if slow_heads is not None:
                slow_heads.closed(self._client(), timeouts.client_header)
            else:
                log.info("closing the connection of %s: no complete request head within %.1fs",
                         self._client(), timeouts.client_header)
            return None
        except (http1.Incomplete, OSError):
            return None                  # the client went away mid-head
        finally:
            if self._head_timer is not None:
                self._head_timer.close()
        self.served += 1
        self.server.requests += 1
        self.response_length = 0
        self.environ = self.get_environ()
        self.application = self.server.application
        set_timeout(self.socket, timeouts.client_idle)   # a client that stops sending or reading
        self.handle_one_response()
        if self.close_connection or self.rfile.closed:
            if not getattr(self.wsgi_input, "finished", True):
                self._linger()
            return None
        self._forget_request()
        return True

    def _forget_request(self) -> None:
        """Drop what the request just answered left on the handler (its environ, head,
        headers, input and response headers): an idle keep-alive connection then holds
        only its socket, reader and greenlet."""
        self.environ = self.head = self.wsgi_input = self.result = None
        self.response_headers = self._head_timer = None

    def read_request(self, raw_requestline):
        """Read the header lines with ``http1.read_head`` (unless the head was parsed whole
        already) and set what pywsgi reads later."""
        head = self.head or http1.read_head(self.rfile, self._limits.max_header_bytes,
                                            first_line=raw_requestline.encode("latin-1"))
        self.head = head
        self.requestline = raw_requestline
        self.command, self.path, self.request_version = (
            head.request.method, head.request.target, head.request.version)
        self.content_length = head.framing.length
        tokens = http1.connection_tokens(head.fields)
        self.close_connection = not http1.persists(self.request_version == "HTTP/1.0", tokens)
        return True

    def _wait_for_request(self) -> bool:
        """Wait for the next request's first byte; False if the client closed, or stayed
        idle past ``client_idle`` (a first request is under the head timer instead)."""
        if not self.served:
            return bool(self.rfile.peek(1))      # under the head timer
        # Let every other ready connection have its turn first. Without this, a client
        # whose next request is already in (wrk, any fast keep-alive client) is served
        # again and again while others wait: at c=500 a tenth of requests waited
        # over a second (p99 2.9 s against a p50 of 130 ms; with it, 275 ms).
        gevent.sleep(0)
        # The socket's own timeout, not a gevent.Timeout: it costs nothing when the next
        # request is already in. (It is client_idle while a request runs as well, so a
        # kept-alive connection sets it once.)
        set_timeout(self.socket, self._timeouts.client_idle)
        try:
            return bool(self.rfile.peek(1))
        except (socket.timeout, TimeoutError):
            log.debug("closing an idle keep-alive connection of %s", self._client())
            return False

    def _refuse(self, error: ClientError):
        """Answer a malformed request head with its status, then close the connection."""
        log.info("bad request from %s: %s %s", self._client(), error.status, error.detail)
        status_line, headers, body = error_response(error, close=True)
        if self._head_method:
            body = b""                   # RFC 9110 §9.3.2: never a body after a HEAD
        extra = getattr(self.server, "refusal_headers", None)    # HSTS over TLS (app.server.tls)
        if extra is not None:
            headers += extra(self.socket)
        try:
            self.socket.sendall(render_head(status_line, headers) + body)
        except OSError:
            return None
        self._linger()
        return None

    def _linger(self) -> None:
        """Stop sending, then read and drop what the client still sends, within bounds."""
        linger(self.socket, LINGER_SECONDS, LINGER_BYTES)

    def read_strict_requestline(self) -> str:
        """The request line, once its first byte is in.

        When the whole head is in the reader's buffer already (nearly always), it is parsed
        at once (``http1.parse_head``), and no read can wait. Otherwise it is read line by
        line, under the head timer (started here if not yet).
        """
        buffered = self.rfile.peek()
        # Known before the head is parsed, so that even its refusal has no body.
        self._head_method = buffered.lstrip(b"\r\n").startswith(b"HEAD ")
        end = buffered.find(b"\r\n\r\n")
        if end > 0 and not buffered.startswith(b"\r\n"):
            self.head = http1.parse_head(self.rfile.read(end + 4),
                                         self._limits.max_header_bytes)
            request = self.head.request
            return f"{request.method} {request.target} {request.version}"
        if self._head_timer is None:
            self._head_timer = gevent.Timeout.start_new(
                header_deadline(self._timeouts.client_header))
        line = http1.read_request_line(self.rfile, self._limits.max_header_bytes)
        self._head_method = line.startswith(b"HEAD ")
        return line.decode("latin-1")

    def strict_input(self) -> "RequestInput":
        """``wsgi.input`` for the current request."""
        expects = self.head.framing.has_body and any(
            n.lower() == "expect" and v.lower() == "100-continue" for n, v in self.head.fields)
        return RequestInput(self.rfile, self.head.framing, self.socket if expects else None)


class RequestInput(Input):
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
