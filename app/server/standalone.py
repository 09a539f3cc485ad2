"""Standalone serving: the pywsgi server and handler, signals, and the graceful drain.

Owns what gevent's pywsgi leaves to the application (STACK-FACTS 13-21): ``TCP_NODELAY``
on every accepted socket, the raw request target and header lines in environ, no stray
body or final chunk on ``HEAD``/``204``/``304``, our logging instead of pywsgi's access
log and tracebacks, the hand-over of a connection to an upgrade tunnel (``app.wire.handoff``),
the garbage collector's settings for serving (``tune_gc``), and a shutdown sequence with
a deadline (below). With ``tls``, the port speaks TLS through ``app.server.tls.Terminator``
(gevent calls its ``wrap_socket`` in each connection's greenlet), and a second, plain
server on ``tls.redirect_from`` answers with redirects (``app.middleware.redirect``).

Each request is read strictly and every wait is bounded by ``connection.StrictConnection``
(``app.wire.http1`` and ``limits``/``timeouts``); the shutdown sequence:

1. SIGTERM or SIGINT sets an event (signals are events, never places to do work);
2. the app is marked draining (``/_myproxy/health`` answers 503) and every response from
   now on carries ``Connection: close``; for ``shutdown_delay`` the server goes on
   accepting and serving, so that clients still routed here while an outer balancer or
   Kubernetes takes it out of rotation are served, not refused (a second signal ends the
   delay at once);
3. the server stops accepting, idle keep-alive connections are closed, and responses
   still in flight carry ``Connection: close``;
4. ``server.stop(shutdown_timeout)`` waits for the in-flight requests in the pool, open
   tunnels included, then kills what is left (a tunnel then closes both its connections);
5. the app's background work stops and the process exits 0.

SIGHUP is an event too: a greenlet re-reads the config file and applies it
(``App.reload_file``) while requests go on being served.

Nothing here runs at import time.
"""
from __future__ import annotations

import gc
import logging
import signal
import socket
import time
from typing import Callable
from urllib.parse import unquote

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import LoggingLogAdapter, WSGIServer, format_date_time

from ..config import LimitsConfig, TimeoutsConfig
from ..wire import http1
from .connection import SlowHeads, StrictConnection
from .shutdown import Shutdown
from .pywsgi_adapter import BaseHandler
from ..errors import ListenError, ProxyError, UpstreamError
from ..wire.handoff import ClientConnection
from ..wire.responses import error_response
from ..wire.sockets import send_all
from .tls import send_close_notify, socket_tls
from ..wire.watch import CLIENT_SOCKET, CLIENT_WATCHER, read_watcher

log = logging.getLogger("myproxy.server")

LISTEN_BACKLOG = 2048       # pending connections the kernel queues before accept()
COALESCE_BYTES = 16 * 1024   # a first body piece up to this size goes out with the head
GC_THRESHOLDS = (10_000, 10, 10)   # see tune_gc
_CGI_KEYS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})   # environ keys without HTTP_


class Handler(StrictConnection, BaseHandler):
    """pywsgi's handler with the fixes a proxy needs (see the module docstring); the
    strict reading of each request is ``StrictConnection``'s, and pywsgi's private methods
    are reached through ``pywsgi_adapter.BaseHandler``'s hooks."""

    idle = True          # waiting for a request line: safe to close when draining
    taken_over = False   # the connection was handed to an upgrade tunnel (app.wire.handoff)
    tls = None           # (version, resumed) of a TLS connection, read once
    _watcher = None      # the connection's read watcher for its requests' ClientWatch

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
            if self._watcher is not None:
                self._watcher.close()    # before the server closes the descriptor
                self._watcher = None

    def handle_one_request(self):
        result = super().handle_one_request()
        if result is None and self.server.ssl_enabled and self.socket is not None:
            # The connection ends: close_notify before pywsgi closes the descriptor under
            # the TLS socket (it does so directly, without the TLS socket's close).
            send_close_notify(self.socket)
        return result

    def read_requestline(self):
        self.idle = True
        if self.server.shutdown.stopped:
            return ""    # stop reading requests on this connection: it is closing
        if not self._wait_for_request():
            return ""
        self.idle = False
        return self.read_strict_requestline()

    def get_environ(self):
        """The WSGI environ, as pywsgi's own would be, made straight from the strict parse:
        ``HTTP_*`` keys (repeated fields joined with ``,``, cookies with ``; ``; names with
        ``_`` left out), plus the raw target (pywsgi decodes ``PATH_INFO``), the header
        lines as received, and the strict body reader."""
        environ = self.server.get_environ()
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
        fields = self.head.fields
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
        environ["myproxy.headers"] = list(fields)
        environ["myproxy.head_checked"] = True
        # Every body is read strictly, an upgrade request's too (pywsgi would hand it the
        # raw reader): a tunnel then starts right after the body.
        self.wsgi_input = environ["wsgi.input"] = self.strict_input()
        environ["wsgi.input_terminated"] = True
        environ["myproxy.take_connection"] = self.take_connection
        if self.server.ssl_enabled:
            if self.tls is None:
                self.tls = socket_tls(self.socket)
            environ["myproxy.tls"] = self.tls
        environ[CLIENT_SOCKET] = self.socket    # watched for aborts (app.wire.watch)
        if self._watcher is None:
            self._watcher = read_watcher(self.socket)
        environ[CLIENT_WATCHER] = self._watcher
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

    def process_result(self):
        if not self.taken_over:
            super().process_result()

    def start_response(self, status, headers, exc_info=None):
        """pywsgi's checks and bookkeeping, plus ours: ``Content-Length`` is dropped from a
        204 or 304 (pywsgi rejects a legal one, STACK-FACTS 17), and ``Connection: close``
        is added from SIGTERM on or when the request body was not read to its end (the
        connection cannot carry another). The header lines are checked and encoded as one
        block (``_header_block``), which ``send_head`` sends."""
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        if not isinstance(status, str):
            raise UnicodeError("The status string must be a native string")
        if "\r" in status or "\n" in status:
            raise ValueError("carriage return or newline in status", status)
        code = int(status.split(" ", 1)[0])
        connection = date = length = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                length = value
            elif lower == "connection":
                connection = value
            elif lower == "date":
                date = value
        if length is not None and code in http1.NO_BODY_STATUSES:   # legal on HEAD
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            length = None
        block = _header_block(headers)
        if connection != "close" and (self.server.shutdown.closing
                                      or not getattr(self.wsgi_input, "finished", True)):
            block += b"Connection: close\r\n"
            connection = "close"
        elif connection is None and self.request_version == "HTTP/1.0":   # say what happens next
            block += b"Connection: close\r\n" if self.close_connection \
                else b"Connection: keep-alive\r\n"
        elif connection is None and self.close_connection:
            # The client asked to close: RFC 9112 §9.6, the server SHOULD say "close" too
            # (wrk, for one, otherwise reads the end of the connection as an error).
            block += b"Connection: close\r\n"
        if connection == "close":
            self.close_connection = True
        self.set_status(status)
        self.response_headers = block
        self.code = code
        self.provided_date = date
        self.provided_content_length = length
        return self.write

    def finalize_headers(self):
        # pywsgi's, with the Date made once a second, and no framing at all when no body
        # follows: pywsgi would chunk and send a stray final chunk that desynchronises
        # keep-alive connections.
        if self.provided_date is None:
            self.response_headers += _date_line()
        if not http1.response_has_body(self.command, self.code):
            self.response_use_chunked = False
            return
        if self.provided_content_length is not None:
            return
        if hasattr(self.result, "__len__"):
            length = sum(len(chunk) for chunk in self.result)
            self.response_headers += b"Content-Length: %d\r\n" % length
        elif self.request_version != "HTTP/1.0":
            self.response_use_chunked = True
            self.response_headers += b"Transfer-Encoding: chunked\r\n"

    def send(self, data):
        # pywsgi's, with sockets.send_all: one send() for what the kernel takes at once.
        try:
            send_all(self.socket, data)
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def send_head(self, data):
        # pywsgi's, but the head and a first body piece that is not large go out in one
        # send, not two.
        self.headers_sent = True
        self.finalize_headers()
        head = b"HTTP/1.1 %b\r\n%b\r\n" % (self.status, self.response_headers)
        if not data or len(data) > COALESCE_BYTES:
            self.send(head)
            self.send_body(data)
        elif self.response_use_chunked:
            self.send(head + http1.encode_chunk(data))
        else:
            self.send(head + data)

    def log_request(self):
        pass             # the access log is RequestLog's

    def handle_error(self, t, v, tb):
        self.close_connection = True
        if issubclass(t, (socket.timeout, TimeoutError)):
            log.info("closing the connection of %s: it stopped reading the response",
                     self._client())
            return
        if not issubclass(t, (UpstreamError, gevent.GreenletExit)):
            log.error("unhandled error serving %s %s", self.command, self.path,
                      exc_info=(t, v, tb))
        if self.taken_over:
            return       # the tunnel owns the connection: nothing more goes on it
        if isinstance(v, ProxyError) and not self.response_length:
            # The backend failed before a byte was sent: answer its status, not a 500.
            status_line, headers, body = error_response(v, close=True)
            self.start_response(status_line, headers)
            try:
                self.write(body)
            except OSError:
                pass
            return
        self.send_error_page(500)

    def client_input_error(self, ex):
        log.info("bad request from %s: %s", self._client(), ex)
        return super().client_input_error(ValueError(str(ex)))


def _header_block(headers) -> bytes:
    """The header lines of ``headers``, each ending in CRLF, as bytes: one join and one
    encode for them all. Raises what pywsgi raises for a name or value that is not a
    native string (``UnicodeError``) or not latin-1, and ``ValueError`` for a CR or LF in
    one (a response split in two)."""
    try:
        text = http1.field_lines(headers)
    except TypeError:
        raise UnicodeError("The header must be a native string", headers) from None
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        bad = next(pair for pair in headers if any("\r" in part or "\n" in part for part in pair))
        raise ValueError("carriage return or newline in header", *bad)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise UnicodeError("Non-latin1 header", headers) from None


_date = [0, b""]         # the second and its Date line, made once a second


def _date_line() -> bytes:
    """The ``Date`` line for now (RFC 9110 §6.6.1), made once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[:] = now, b"Date: %b\r\n" % format_date_time(now)   # bytes, from pywsgi
    return _date[1]


class Server(WSGIServer):
    """A pywsgi server that knows which connections it holds and where its shutdown is."""

    handler_class = Handler
    # gevent listens with a backlog of 128: when more clients connect at once (wrk at
    # c=500), the kernel drops their handshakes and they retry after a second or more,
    # which was the whole p99 at c=500. nginx uses 511 and gunicorn 2048; the kernel caps
    # it at net.core.somaxconn.
    backlog = LISTEN_BACKLOG

    def __init__(self, listener, application, max_connections: int = 10000,
                 limits: LimitsConfig = LimitsConfig(), timeouts: TimeoutsConfig = TimeoutsConfig(),
                 settings: Callable[[], object] | None = None, tls=None,
                 shutdown: Shutdown | None = None):
        """``settings`` returns the config in force (``App.config``), read at each use of
        ``limits`` and ``timeouts``; without it, those two are fixed. ``tls`` (an
        app.server.tls.Terminator) is what gevent calls ``wrap_socket`` on, in each
        connection's greenlet, before the handler runs. ``shutdown`` is the process's
        (``App.shutdown``), which SIGTERM moves on; without it, the server's own."""
        ssl_args = {"ssl_context": tls} if tls is not None else {}
        super().__init__(listener, application, spawn=Pool(max_connections), log=None,
                         error_log=LoggingLogAdapter(log, logging.ERROR), **ssl_args)
        self._fixed = (limits, timeouts)
        self._settings = settings
        # The TLS side's own answer headers (app.server.tls.Terminator), for refusals; None
        # over plain HTTP, or with gunicorn's own context (--certfile, no tls in the config).
        self._refusal_headers = getattr(tls, "refusal_headers", None)
        self.connections: set[Handler] = set()
        self.shutdown = shutdown or Shutdown()
        self.slow_heads = SlowHeads()    # slowloris closes, one log line a second
        self.requests = 0           # request heads read (gunicorn's max_requests counts them)

    def refusal_headers(self, sock) -> list[tuple[str, str]]:
        """Header fields for the connection's own error answers on ``sock`` (HSTS over TLS)."""
        return self._refusal_headers(sock) if self._refusal_headers is not None else []

    @property
    def limits(self) -> LimitsConfig:
        return self._settings().limits if self._settings is not None else self._fixed[0]

    @property
    def timeouts(self) -> TimeoutsConfig:
        return self._settings().timeouts if self._settings is not None else self._fixed[1]

    def drain(self, timeout: float) -> bool:
        """Stop accepting, close idle connections, wait up to ``timeout`` for the rest.

        Returns True when every in-flight request finished in time.
        """
        self.shutdown.stop()
        self.close()
        self._close_idle()
        in_flight = len(self.connections)
        log.info("draining: %d connection(s) open, waiting up to %.1fs", in_flight, timeout)
        self.stop(timeout=timeout)
        finished = len(self.pool) == 0 if self.pool is not None else True
        return finished

    def _close_idle(self) -> None:
        for handler in list(self.connections):
            if handler.idle:
                sock = getattr(handler, "socket", None)
                try:
                    if sock is not None:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def serve(app, config, listener=None, ready: Event | None = None) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then drain. Returns the exit code (0).

    ``listener`` is an address or a bound socket (tests pass one on port 0); ``ready`` is
    set once the server accepts connections.
    """
    tls = getattr(app, "tls", None)
    server = Server(listener or (config.host, config.port), app,
                    max_connections=config.limits.max_connections,
                    settings=lambda: app.config, tls=tls, shutdown=app.shutdown)
    listen(server, config.host, config.port)
    servers = [server]
    if tls is not None and config.tls.redirect_from:
        # The plain-HTTP listener of tls.redirect_from: the same app, which answers what
        # did not come over TLS with a 308 (app.middleware.redirect).
        redirect = Server((config.host, config.tls.redirect_from), app,
                          max_connections=config.limits.max_connections,
                          settings=lambda: app.config, shutdown=app.shutdown)
        listen(redirect, config.host, config.tls.redirect_from)
        servers.append(redirect)
    app.metrics.count_connections(lambda: sum(len(each.connections) for each in servers))
    app.start()    # before the line that says we listen: it may fail (StartupError)
    # Signals are ours before the line that says we listen: whoever waits for that line
    # may send SIGHUP or SIGTERM at once, and the default action would kill the process.
    stop, reload = Event(), Event()
    handlers = [gevent.signal_handler(signum, _on_signal, signum, stop)
                for signum in (signal.SIGTERM, signal.SIGINT)]
    handlers.append(gevent.signal_handler(signal.SIGHUP, reload.set))
    log_listening(server.address, config, tls=tls is not None)
    for each in servers[1:]:
        log.info("redirecting http://%s:%d to https", each.address[0], each.address[1])

    reloader = gevent.spawn(reload_on, reload, app)
    tune_gc()
    for each in servers:
        each.start()
    if ready is not None:
        ready.set()
    try:
        stop.wait()
        app.shutdown.begin()
        reloader.kill()
        delay = app.config.shutdown_delay            # as reloaded, if it was
        if delay > 0:
            log.info("shutdown_delay: accepting for %.1fs more, /health answers 503", delay)
            stop.clear()
            if stop.wait(delay):
                log.info("second signal: ending shutdown_delay now")
        timeout = app.config.shutdown_timeout
        for each in servers[1:]:
            each.close()                 # the redirect listener stops accepting too
        app.drain_queues()               # queued requests are answered 503 now
        finished = server.drain(timeout)
        for each in servers[1:]:
            each.drain(1.0)              # its answers take no time
        if not finished:
            log.warning("shutdown timeout of %.1fs passed; remaining requests were cut off",
                        timeout)
    finally:
        for handler in handlers:
            handler.cancel()
        reloader.kill()
        app.stop()
        server.slow_heads.flush()
    log.info("stopped")
    return 0


def listen(server: Server, host: str, port: int) -> None:
    """Open ``server``'s listening socket on ``host``:``port``; a port in use, an address
    not on this machine, a port below 1024 without the privilege: one ``ListenError``."""
    try:
        server.init_socket()
    except OSError as error:
        raise ListenError(host, port, error) from None


def log_listening(address, config, tls: bool = False) -> None:
    """The start-up line: where the server listens (``address``), the backends, the policy,
    each route's backends."""
    host, port = address[:2]
    log.info("listening on %s://%s:%d backends=%s policy=%s%s", "https" if tls else "http",
             host, port, ",".join(b.url for b in config.backends) or "-", config.policy,
             "".join(f" route={route.name}:{','.join(b.url for b in route.backends)}"
                     for route in config.routes))


def tune_gc() -> None:
    """Set the cyclic garbage collector for serving, once the app has started.

    With Python's defaults (a young collection every 700 net allocations, a full one after
    100 of those) a full collection ran every half second at c=500 and paused the process
    for 11-22 ms each time, finding nothing: every request in flight waited, which is the
    p99. What the start-up made stays for the process's life, so it is frozen out of the
    collector's scans (``gc.freeze``), and young collections run every ``GC_THRESHOLDS[0]``
    net allocations: a request's objects are freed by reference counting, and what cycles
    it leaves are still collected, young, a few times a minute under load.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _on_signal(signum: int, stop: Event) -> None:
    log.info("received %s: stopping", signal.Signals(signum).name)
    stop.set()


def reload_on(event: Event, app, applied: Callable[[], None] | None = None) -> None:
    """Reload the config each time ``event`` is set (SIGHUP); several at once make one.
    ``applied`` is called after each reload that was applied.

    Also run in each gunicorn worker (``app.server.gunicorn_worker``)."""
    while True:
        event.wait()
        event.clear()
        log.info("received SIGHUP: reloading the config")
        try:
            if app.reload_file() and applied is not None:
                applied()
        except Exception:  # noqa: BLE001 - a background loop never dies silently
            log.exception("config reload failed; the running config stays")
