"""MyProxy inside gunicorn workers: MyProxy's own worker class, and the stock gevent worker.

``Worker`` (``gunicorn.conf.py``'s ``worker_class``, the Procfile's) is gunicorn's gevent
worker serving each accepted connection with the connection code ``python wsgi.py`` uses
(``app.server.standalone.Server`` and ``app.server.handler.Handler``): the same
strict parse, limits, timeouts, response framing, header lines and tunnel hand-over.
gunicorn's arbiter still does pre-fork, ``WEB_CONCURRENCY``, worker restarts and signals;
the worker starts the app after the fork, reloads on SIGHUP and drains on SIGTERM as
``standalone.serve`` does.

The rest of this module makes the stock ``gunicorn -k gevent`` worker (gunicorn's own
parser and response writer) behave as closely as it can. ``gunicorn.conf.py``'s
``post_worker_init`` hook calls ``start_worker(worker)``, which makes a stock worker
behave as ``python wsgi.py`` does:

- the app's background work starts in the worker, after the fork (STACK-FACTS 22);
- SIGHUP (sent by the master, see ``gunicorn.conf.py``) re-reads the config file in place;
- SIGTERM moves ``App.shutdown`` on at once (``/_myproxy/health`` answers 503) and from then
  on every response closes its connection; for ``shutdown_delay`` the worker goes on
  accepting on its inherited copy of the listener (the master closes its own copies at
  once, STACK-FACTS 27), then gunicorn stops accepting and waits for the requests in
  flight. gunicorn would also wait for every idle keep-alive connection until
  its ``keepalive`` timeout, and would keep a connection open after a response that was
  in flight: so idle connections are closed at once, and requests in flight are marked
  to close their connection when their response ends (with ``Connection: close`` when
  their headers are still to be sent).

It watches each connection and request the worker serves to know which connections
are idle (``gunicorn_adapter.watch_serving``: what of gunicorn's internals this module
relies on is there). ``ServerConnection`` (a WSGI wrapper ``start_worker`` puts
outermost) gives the app what ``python wsgi.py``'s own handler does itself: a client that
stops sending its body or reading the response is cut off (``timeouts.client_idle``), and
a response that says ``Connection: close`` really closes the connection. ``QuietLogger``
is gunicorn's logger without a traceback for the connections ended on purpose.
It knows nothing of proxying.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from functools import partial
from typing import Callable, Iterable

import gevent
from gevent.event import Event

from ..errors import StartupError, UpstreamError
from ..request import KEY as REQUEST
from .connection import header_deadline
from .gunicorn_adapter import (WORKER_BOOT_ERROR, GeventWorker, force_close, header_values,
                               ssl_context, take_connection, time_request_waits,
                               watch_serving)
from ..wire.handoff import TAKE_CONNECTION
from ..wire.http1 import list_tokens
from ..wire.responses import close_body
from .shutdown import Shutdown
from .standalone import Server, log_listening, reload_on, tune_gc

log = logging.getLogger("myproxy.server")

# Settings gunicorn.conf.py turns into gunicorn's own at start, which a reload therefore
# cannot change: the arbiter kills a worker still draining after its graceful_timeout;
# the stock worker also times the wait for a request with keepalive.
FIXED_AT_START = ("shutdown_timeout",)
STOCK_FIXED_AT_START = FIXED_AT_START + ("timeouts.client_header", "timeouts.client_idle")


class Worker(GeventWorker):
    """gunicorn's gevent worker, serving with MyProxy's own server and handler.

    Usage: ``gunicorn -k app.server.gunicorn_worker.Worker wsgi:application`` (what
    ``gunicorn.conf.py`` sets). gunicorn's base worker does the fork-side work (sockets,
    heartbeat, SIGTERM/SIGINT/SIGQUIT, ``max_requests`` with its jitter); ``run`` replaces
    gunicorn's request loop with one ``standalone.Server`` per listening socket, so nothing
    of gunicorn's HTTP code (parser, ``util.hop_headers``, response writer) touches a
    request. ``max_requests`` is checked once a second: the worker then drains and exits,
    and the arbiter starts a fresh one.
    """

    def run(self):
        app = self.wsgi
        app.fixed_by_server = FIXED_AT_START
        config = app.config
        servers = [self.make_server(sock, app, config) for sock in self.sockets]
        app.metrics.count_connections(lambda: sum(len(server.connections) for server in servers))
        reload = Event()
        # Kept on the worker: a signal watcher that is garbage-collected stops watching.
        self.myproxy = [gevent.signal_handler(signal.SIGHUP, reload.set),
                        gevent.spawn(reload_on, reload, app)]
        try:
            app.start()
        except StartupError as error:
            log.error("cannot start: %s", error)
            # gunicorn's WORKER_BOOT_ERROR: the arbiter stops instead of forking again and again.
            sys.exit(WORKER_BOOT_ERROR)
        tune_gc()
        for server in servers:
            server.start()
            log_listening(server.address, config, tls=bool(self.cfg.is_ssl))
        log.info("worker %d ready: SIGHUP reloads the config, SIGTERM drains", os.getpid())
        reason, delay = "received SIGTERM", None
        while self.alive:           # gunicorn's handle_exit (SIGTERM) clears it
            self.notify()
            self._stopping.wait(1.0)
            if sum(server.requests for server in servers) >= self.max_requests:
                # Replaced, not stopped: the other workers go on accepting, so no delay.
                reason = f"served max_requests ({self.max_requests}), gunicorn starts another"
                delay = 0.0
                break
        app.shutdown.begin()        # /health 503, every response from now on closes
        self.myproxy[1].kill()
        delay = app.config.shutdown_delay if delay is None else delay
        if delay > 0:
            # Go on accepting on the inherited listener copies, /health answering 503, so
            # that an outer balancer that has not yet seen the SIGTERM loses nothing.
            log.info("shutdown_delay: accepting for %.1fs more, /health answers 503", delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                self.notify()
                gevent.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        app.drain_queues()          # queued requests (max_conns) are answered 503 now
        self._drain(servers, app.config.shutdown_timeout, reason)

    def make_server(self, sock, app, config) -> Server:
        """The server for one of gunicorn's listening sockets.

        This is where an accepted socket meets TLS: with ``tls`` in the config,
        ``gunicorn.conf.py`` sets gunicorn's ``certfile`` and its ``ssl_context`` hook
        returns the app's ``app.server.tls.Terminator`` (SNI, live certificates, the bounded
        handshake), on which gevent calls ``wrap_socket`` for each accepted socket before the
        handler reads from it; a socket of ``tls.redirect_from`` stays plain.
        """
        sock.setblocking(1)
        server = Server(sock, app, max_connections=self.worker_connections,
                        live=app.live,
                        tls=ssl_context(self.cfg) if self.cfg.is_ssl else None,
                        shutdown=app.shutdown)
        if self.cfg.workers > 1:
            server.max_accept = 1   # as gunicorn's: one accept per wake-up, spread over workers
        return server

    def _drain(self, servers, timeout: float, reason: str) -> None:
        """``standalone.serve``'s drain for each server within one deadline, with heartbeats
        to the arbiter meanwhile (it replaces a worker that stays silent for ``timeout``)."""
        def drain_all():
            deadline = time.monotonic() + timeout
            for server in servers:
                if not server.drain(max(0.0, deadline - time.monotonic())):
                    log.warning("shutdown timeout of %.1fs passed; remaining requests were "
                                "cut off", timeout)

        log.info("%s: draining", reason)
        drainer = gevent.spawn(drain_all)
        while not drainer.ready():
            self.notify()
            drainer.join(1.0)
        log.info("stopped")

    def init_signals(self):
        super().init_signals()
        self._stopping = Event()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        self._stopping.set()        # wakes run() at once; sets a flag only (a signal handler)


class Connections:
    """The client connections of one gunicorn worker, and the request each one is serving."""

    def __init__(self, shutdown: Shutdown):
        self.open: set = set()          # client sockets
        self.serving: dict = {}         # client socket -> the gunicorn request in progress
        self.shutdown = shutdown        # the app's: from SIGTERM on, each response closes

    def track(self, worker) -> None:
        """Keep the sets up to date as ``worker`` serves (``gunicorn_adapter.watch_serving``)."""
        watch_serving(worker, self)

    def opened(self, client) -> None:
        self.open.add(client)

    def closed(self, client) -> None:
        self.open.discard(client)

    def request_started(self, req, sock) -> None:
        self.serving[sock] = req
        if self.shutdown.closing or asks_close(req):
            force_close(req)

    def request_done(self, sock) -> None:
        self.serving.pop(sock, None)

    def close_after_response(self) -> None:
        """From now on, every response (those in flight too) closes its connection."""
        self.shutdown.begin()
        for req in self.serving.values():
            force_close(req)

    def close_when_done(self) -> int:
        """Close idle connections now and the others after their response; return the idle count."""
        self.close_after_response()
        idle = [sock for sock in self.open if sock not in self.serving]
        for sock in idle:
            _end_reading(sock)
        return len(idle)


def asks_close(req) -> bool:
    """Whether a gunicorn request's ``Connection`` lines list ``close``. gunicorn hears it
    only as the first line's whole value ("close, TE" or "close, close" keep the connection,
    and it serves the request pipelined behind); RFC 9112 §9.6 says none is."""
    return "close" in list_tokens(",".join(header_values(req, "connection")))


def _end_reading(sock) -> None:
    """Wake the greenlet waiting for the next request on ``sock`` with end-of-file.

    Shut down through a duplicate descriptor: gevent's own ``shutdown`` would throw an
    error into the waiting greenlet instead, which gunicorn logs as a traceback.
    """
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
            duplicate.shutdown(socket.SHUT_RD)
    except OSError:
        pass            # already closed by the client


def start_worker(worker) -> None:
    """Start the app of a freshly forked stock gevent worker and take over its SIGHUP and
    SIGTERM. MyProxy's own ``Worker`` does this in its ``run``."""
    if isinstance(worker, Worker):
        return
    app = worker.wsgi
    app.fixed_by_server = STOCK_FIXED_AT_START
    app.wrap(ServerConnection)       # what MyProxy's own server does for each connection
    try:
        app.start()
    except StartupError as error:
        log.error("cannot start: %s", error)
        # gunicorn's WORKER_BOOT_ERROR: the arbiter stops instead of forking again and again.
        sys.exit(WORKER_BOOT_ERROR)
    for sock in worker.sockets:
        log_listening(sock.getsockname(), app.config, tls=bool(worker.cfg.is_ssl))
    tune_gc()
    connections = Connections(app.shutdown)
    connections.track(worker)
    app.metrics.count_connections(lambda: len(connections.open))
    _spread_head_timeouts(worker)
    reload = Event()
    graceful_stop = signal.getsignal(signal.SIGTERM)      # gunicorn's own: stop accepting

    def on_term(signum, frame):
        app.shutdown.begin()         # flags and a spawn only: this runs in a signal handler
        gevent.spawn(_shut_down, app.config.shutdown_delay, connections,
                     lambda: graceful_stop(signum, frame), app.drain_queues)

    signal.signal(signal.SIGTERM, on_term)
    # Kept on the worker: a signal watcher that is garbage-collected stops watching.
    worker.myproxy = [gevent.signal_handler(signal.SIGHUP, reload.set),
                      gevent.spawn(reload_on, reload, app), connections]
    log.info("worker %d ready: SIGHUP reloads the config, SIGTERM drains", os.getpid())


def _spread_head_timeouts(worker) -> None:
    """gunicorn times each wait for a request head with one ``keepalive`` timer; each gets
    up to ``connection.HEADER_JITTER`` less, so a slowloris burst is closed over a spread,
    not in one turn of the event loop (gunicorn logs none of these closes)."""
    keepalive = worker.cfg.keepalive
    time_request_waits(worker, lambda: gevent.Timeout(header_deadline(keepalive), False))


GUNICORN_POLL = 1.0   # seconds: the worker's loop looks at ``alive`` this often


def _shut_down(delay: float, connections: Connections, stop_accepting: Callable[[], None],
               drain_queues: Callable[[], None] = lambda: None) -> None:
    """SIGTERM's sequence in a worker: serve on for ``delay``, then gunicorn's drain (the
    requests waiting in a queue for a slot answered 503 first)."""
    connections.close_after_response()
    if delay > 0:
        log.info("received SIGTERM: shutdown_delay: accepting for %.1fs more, "
                 "/health answers 503", delay)
        gevent.sleep(delay)
    drain_queues()
    stop_accepting()
    connections.shutdown.stop()
    log.info("received SIGTERM: draining, %d connection(s) open, %d idle closed",
             len(connections.open), connections.close_when_done())
    # gunicorn closes the listener at its loop's next look at ``alive``: a connection
    # accepted until then and still idle is closed as well.
    gevent.sleep(GUNICORN_POLL + 0.1)
    connections.close_when_done()


class CloseConnection(Exception):
    """Raised after the last byte of a response that must close its connection, on a
    server that ignores the app's ``Connection: close`` (gunicorn), which then closes it."""


class ServerConnection:
    """What the app needs from a server that hands it the client socket but keeps the
    connection (gunicorn's gevent worker, ``gunicorn.socket``): a timeout on each read of
    the body and write of the response, a ``Connection: close`` from the app honoured, and
    for an upgrade request the hand-over of the connection (``app.wire.handoff``).
    Elsewhere it passes straight through.

    Usage: ``app = ServerConnection(app)``; the timeout is the request's runtime's
    ``timeouts.client_idle`` (its ``Request``'s runtime), so a reload changes it.
    """

    SOCKET_KEY = "gunicorn.socket"

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        sock = environ.get(self.SOCKET_KEY)
        if sock is None:
            return self.app(environ, start_response)
        state = {"close": False}

        def start(status: str, headers: list, exc_info=None):
            state["close"] = any(name.lower() == "connection" and value.lower() == "close"
                                 for name, value in headers)
            return start_response(status, headers, exc_info)

        request = environ[REQUEST]
        send_timeout = request.runtime.config.timeouts.client_idle
        if send_timeout:
            # Each read of the body and each write of the response; gunicorn's own timer
            # (keepalive) covers the wait for the next request once this is undone.
            sock.settimeout(send_timeout)
        if "HTTP_UPGRADE" in environ:     # a tunnel may take the connection (app.wire.handoff)
            environ[TAKE_CONNECTION] = partial(take_connection, sock, environ.get("wsgi.input"))
        body = self.app(environ, start)
        if request.tunnel is not None:
            return body          # an upgraded connection, ended: gunicorn's marker, as is
        return _ServerBody(body, sock, state)


class _ServerBody:
    """Passes the body through, then closes the connection if asked; restores the socket."""

    def __init__(self, body, sock, state: dict):
        self._body = body
        self._sock = sock
        self._state = state

    def __iter__(self):
        yield from self._body
        if self._state["close"]:
            yield b""            # makes the server send the headers of an empty body first
            raise CloseConnection("the response asked to close the connection")

    def close(self) -> None:
        try:
            close_body(self._body)
        finally:
            try:
                self._sock.settimeout(None)
            except OSError:
                pass


def quiet_logger_class():
    """gunicorn's logger, without a traceback for the two ways ``ServerConnection`` ends a
    connection on purpose, nor for a backend that failed partway through a response body
    (the proxy has logged it in one line, and the client's connection is closed so that
    the cut body cannot pass for a whole one). Made on call: this module is imported by
    ``gunicorn.conf.py`` in the master, before gunicorn's logger is wanted."""
    from gunicorn.glogging import Logger

    class QuietLogger(Logger):
        def exception(self, msg, *args, **kwargs):
            error = sys.exc_info()[1]
            if isinstance(error, (CloseConnection, UpstreamError)):
                return          # a refused request or a failed backend: the app has logged it
            if isinstance(error, TimeoutError):
                self.info("closed a client connection: it stopped sending or reading")
                return
            super().exception(msg, *args, **kwargs)

    return QuietLogger
