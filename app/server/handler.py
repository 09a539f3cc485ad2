"""The client connection under ``python wsgi.py`` (and MyProxy's gunicorn worker): one
``Handler`` per connection reads each request strictly, runs the app, and writes the
response itself (``app.server.response``).

pywsgi's ``WSGIHandler`` is the base for its connection loop only (``handle``, which calls
``handle_one_request`` until it returns None, then closes the socket); every request is
read and answered here (``app.server.pywsgi_adapter`` says what of pywsgi is relied on):

- the head is parsed with ``app.wire.http1`` (pywsgi's parsing is lax, STACK-FACTS 15-19):
  from the reader's buffer in one go when it is all in (nearly always), else line by line;
  a malformed head, or one over the limits, is answered with its typed error's status
  (400, 405, 414, 431, 505) and the connection closed after a bounded lingering read, so
  nothing pipelined behind it ever runs;
- each wait is bounded (STACK-FACTS 14): a new connection has ``timeouts.client_header``
  for its first head; later, ``client_idle`` to start the next one and then
  ``client_header`` to finish it; while a request runs, the socket's timeout is
  ``client_idle``, so a client that stops sending its body (408) or reading is cut off;
- the target is made origin-form as the head is read (``http1.origin_form``: ``CONNECT``
  is 405; an absolute-form target's authority becomes the ``Host``), so the proxy only
  ever connects to its configured backends;
- the environ is pywsgi's shape, made from the strict parse, plus the raw target
  (``RAW_URI``: pywsgi decodes ``PATH_INFO``), the header lines as received
  (``myproxy.headers``), the connection's client watch (``app.wire.watch``), and
  the hand-over of the connection to an upgrade tunnel (``app.wire.handoff``);
- the response is written by ``ResponseWriter`` (``app.server.response``), the other half
  of the class.

The settings in force are read at each request from the server's ``live`` runtime (a
reload changes the next request's). It knows nothing of proxying.
"""
from __future__ import annotations

import logging
import socket
from urllib.parse import unquote

import gevent

from ..errors import ClientError
from ..wire import http1
from ..wire.handoff import ClientConnection
from ..wire.responses import error_response, render_head
from ..wire.gevent_adapter import linger
from ..wire.watch import CLIENT_WATCH, ClientWatch, read_watcher
from .connection import (EMPTY_INPUT, LINGER_BYTES, LINGER_SECONDS, RequestInput,
                         header_deadline)
from .pywsgi_adapter import BaseHandler
from .response import ResponseWriter
from .tls import send_close_notify, socket_tls

log = logging.getLogger("myproxy.server")

_CGI_KEYS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})   # environ keys without HTTP_


class Handler(ResponseWriter, BaseHandler):
    """One client connection: its requests read strictly here, answered by the app, and
    written by ``ResponseWriter`` (module docstring)."""

    idle = True          # waiting for a request line: safe to close when draining
    taken_over = False   # the connection was handed to an upgrade tunnel (app.wire.handoff)
    tls = None           # (version, resumed) of a TLS connection, read once
    served = 0           # requests answered on this connection
    head = None          # the http1.Head of the current request
    watcher = None       # the connection's read watcher, for its ClientWatch
    watch = None         # the connection's ClientWatch, lent to each request
    head_timer = None    # the gevent.Timeout on the head being read, if any
    head_method = False  # the request being read is a HEAD: an answer to it has no body
    limits = timeouts = None   # the settings in force for the current request
    authority = None     # the host an absolute-form target named

    # The connection ------------------------------------------------------------------

    def handle(self):
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass         # not TCP (a UNIX socket in a test): nothing to tune
        self.server.connections.add(self)
        try:
            super().handle()
        finally:
            self.server.connections.discard(self)
            if self.watch is not None:
                self.watch.close()
                self.watch = None
            if self.watcher is not None:
                self.watcher.close()    # before the server closes the descriptor
                self.watcher = None

    def handle_one_request(self):
        """Read one request head strictly and answer the request; None ends the connection.

        A malformed head is answered with its typed error's status (``refuse``) and the
        connection closed; a head slower than ``client_header`` or a client gone
        mid-head just closes it."""
        ended = True
        try:
            if self.rfile.closed:
                return None
            config = self.server.live.runtime.config   # in force for this request
            self.limits = config.limits
            self.timeouts = timeouts = config.timeouts
            self.head_timer = None
            if not self.served:              # a new connection: client_header for its first head
                self.head_timer = gevent.Timeout.start_new(header_deadline(timeouts.client_header))
            try:
                if not self.read_head():
                    return None
            except ClientError as error:
                return self.refuse(error)
            except gevent.Timeout as timeout:
                if timeout is not self.head_timer:
                    raise
                self.server.slow_heads.closed(self.client(), timeouts.client_header)
                return None
            except (http1.Incomplete, OSError):
                return None                  # the client went away mid-head
            finally:
                if self.head_timer is not None:
                    self.head_timer.close()
            self.served += 1
            self.server.requests += 1
            self.environ = self.get_environ()
            # A client that stops sending or reading is cut off: the socket's timeout is
            # client_idle from the first head on (set again only when a reload changed it).
            sock = self.socket
            if sock.timeout != timeouts.client_idle:
                sock.settimeout(timeouts.client_idle)
            self.handle_one_response()
            if self.close_connection or self.rfile.closed:
                if not self.wsgi_input.finished:
                    self.linger()
                return None
            # What the request left on the handler goes: an idle keep-alive connection then
            # holds only its socket, reader and greenlet.
            self.environ = self.head = self.wsgi_input = self.result = None
            self.response_headers = self.head_timer = None
            ended = False
            return True
        finally:
            if ended and self.server.ssl_enabled and self.socket is not None:
                # The connection ends: close_notify before pywsgi closes the descriptor
                # under the TLS socket (it does so directly, without the TLS socket's close).
                send_close_notify(self.socket)

    def read_head(self) -> bool:
        """Wait for the next request and read its head; False when the connection ends
        first (the client closed it, stayed idle past ``client_idle``, or we drain)."""
        self.idle = True
        if self.server.shutdown.stopped:
            return False     # stop reading requests on this connection: it is closing
        rfile = self.rfile
        if self.served:
            # Let every other ready connection have its turn first. Without this, a client
            # whose next request is already in (wrk, any fast keep-alive client) is served
            # again and again while others wait: at c=500 a tenth of requests waited over
            # a second (p99 2.9 s against a p50 of 130 ms; with it, 275 ms).
            gevent.sleep(0)
            # The socket's own timeout, client_idle since the last request's head was
            # read, not a gevent.Timeout: it costs nothing when the next request is
            # already in.
            try:
                if not rfile.peek(1):
                    return False
            except (socket.timeout, TimeoutError):
                log.debug("closing an idle keep-alive connection of %s", self.client())
                return False
        elif not rfile.peek(1):          # under the head timer
            return False
        self.idle = False
        max_bytes = self.limits.max_header_bytes
        buffered = rfile.peek()
        # Known before the head is parsed, so that even its refusal has no body.
        self.head_method = buffered.lstrip(b"\r\n").startswith(b"HEAD ")
        end = buffered.find(b"\r\n\r\n")
        if end > 0 and not buffered.startswith(b"\r\n"):
            # The whole head is in the reader's buffer (nearly always): parsed at once,
            # and no read can wait.
            head = http1.parse_head(rfile.read(end + 4), max_bytes)
        else:
            if self.head_timer is None:
                self.head_timer = gevent.Timeout.start_new(
                    header_deadline(self.timeouts.client_header))
            line = http1.read_request_line(rfile, max_bytes)
            self.head_method = line.startswith(b"HEAD ")
            head = http1.read_head(rfile, max_bytes, first_line=line)
        self.head = head
        request = head.request
        # Origin-form from here on (CONNECT is 405, any other form but a path 400): an
        # absolute-form target's authority is the request's Host (RFC 9112 §3.2.2).
        target, self.authority = http1.origin_form(request.method, request.target)
        self.command, self.path, self.request_version = request.method, target, request.version
        self.requestline = f"{request.method} {request.target} {request.version}"
        self.content_length = head.framing.length
        self.close_connection = not http1.persists(request.version == "HTTP/1.0", head.connection)
        return True

    def get_environ(self):
        """The WSGI environ, as pywsgi's own would be, made straight from the strict parse:
        ``HTTP_*`` keys (repeated fields joined with ``,``, cookies with ``; ``; names with
        ``_`` left out), plus the raw target, the header lines as received, the strict body
        reader, the client socket and its watcher."""
        environ = self.server.get_environ()
        head = self.head
        environ["REQUEST_METHOD"] = self.command
        environ["SCRIPT_NAME"] = ""
        path, _, query = self.path.partition("?")
        environ["PATH_INFO"] = unquote(path, encoding="latin-1")
        environ["QUERY_STRING"] = query
        environ["SERVER_PROTOCOL"] = self.request_version
        address = self.client_address
        if isinstance(address, tuple):
            environ["REMOTE_ADDR"] = str(address[0])
            environ["REMOTE_PORT"] = str(address[1])
        fields = head.fields
        for name, value in fields:
            if "_" in name:
                continue                # as pywsgi: X_Forwarded_For must not pass as X-Forwarded-For
            key = name.upper().replace("-", "_")
            if key in _CGI_KEYS:
                if key not in environ and (value or key == "CONTENT_TYPE"):
                    environ[key] = value          # the first one
                continue
            key = "HTTP_" + key
            if key in environ:
                environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                environ[key] = value
        environ["RAW_URI"] = self.path
        authority = self.authority
        if authority is None:
            environ["myproxy.headers"] = list(fields)
        else:
            environ["HTTP_HOST"] = authority
            environ["myproxy.headers"] = [(n, authority if n.lower() == "host" else v)
                                          for n, v in fields]
        environ["myproxy.head_checked"] = True
        # Every body is read strictly, an upgrade request's too (pywsgi would hand it the
        # raw reader): a tunnel then starts right after the body.
        framing = head.framing
        if head.has_body:
            self.wsgi_input = RequestInput(self.rfile, framing,
                                           self.socket if head.expects_continue else None)
        else:
            self.wsgi_input = EMPTY_INPUT
        environ["wsgi.input"] = self.wsgi_input
        environ["wsgi.input_terminated"] = True
        environ["myproxy.take_connection"] = self.take_connection
        if self.server.ssl_enabled:
            if self.tls is None:
                self.tls = socket_tls(self.socket)
            environ["myproxy.tls"] = self.tls
        # The client, watched for aborts while a backend is waited on (app.wire.watch):
        # one watch for the connection, made with its first request.
        watch = self.watch
        if watch is None:
            self.watcher = read_watcher(self.socket)
            watch = self.watch = ClientWatch(self.socket, io=self.watcher)
        watch.http11 = self.request_version == "HTTP/1.1"
        environ[CLIENT_WATCH] = watch
        return environ

    def take_connection(self) -> ClientConnection:
        """Hand the connection to an upgrade tunnel: its socket, and its reader's read-ahead
        first (``app.wire.handoff``).

        The app then writes the response itself; this handler writes nothing more and
        closes the connection once the app returns.
        """
        self.taken_over = True
        self.close_connection = True
        return ClientConnection(self.socket, self.rfile.read1, [])

    # Refusals --------------------------------------------------------------------------

    def refuse(self, error: ClientError):
        """Answer a malformed request head with its status, then close the connection."""
        log.info("bad request from %s: %s %s", self.client(), error.status, error.detail)
        status_line, headers, body = error_response(error, close=True)
        if self.head_method:
            body = b""                   # RFC 9110 §9.3.2: never a body after a HEAD
        extra = getattr(self.server, "refusal_headers", None)    # HSTS over TLS (app.server.tls)
        if extra is not None:
            headers += extra(self.socket)
        try:
            self.socket.sendall(render_head(status_line, headers) + body)
        except OSError:
            return None
        self.linger()
        return None

    def linger(self) -> None:
        """Stop sending, then read and drop what the client still sends, within bounds."""
        linger(self.socket, LINGER_SECONDS, LINGER_BYTES)

    def client(self) -> str:
        address = self.client_address
        return address[0] if isinstance(address, tuple) else str(address)

    def log_request(self):
        pass             # the access log is app.middleware.access's
