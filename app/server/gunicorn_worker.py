"""MyProxy inside a gunicorn gevent worker: start after the fork, reload on SIGHUP, drain on SIGTERM.

``gunicorn.conf.py``'s ``post_worker_init`` hook calls ``start_worker(worker)``, which makes
a worker behave as ``python wsgi.py`` does (``app.server.standalone``):

- the app's background work starts in the worker, after the fork (STACK-FACTS 22);
- SIGHUP (sent by the master, see ``gunicorn.conf.py``) re-reads the config file in place;
- SIGTERM sets ``App.draining`` at once (``/_myproxy/health`` answers 503) and from then
  on every response closes its connection; for ``shutdown_delay`` the worker goes on
  accepting on its inherited copy of the listener (the master closes its own copies at
  once, STACK-FACTS 27), then gunicorn stops accepting and waits for the requests in
  flight. gunicorn would also wait for every idle keep-alive connection until
  its ``keepalive`` timeout, and would keep a connection open after a response that was
  in flight: so idle connections are closed at once, and requests in flight are marked
  to close their connection when their response ends (with ``Connection: close`` when
  their headers are still to be sent).

It relies on two methods every gunicorn async worker has, ``handle`` (one client
connection) and ``handle_request`` (one request on it), which it wraps to know which
connections are idle. ``ServerConnection`` (a WSGI wrapper the composition root puts
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
from typing import Callable, Iterable

import gevent
from gevent.event import Event

from ..errors import StartupError, UpstreamError
from .connection import header_deadline
from .responses import close_body
from .standalone import reload_on, tune_gc

WORKER_BOOT_ERROR = 3    # gunicorn's Arbiter.WORKER_BOOT_ERROR: a worker that exits so halts it

log = logging.getLogger("myproxy.server")


class Connections:
    """The client connections of one gunicorn worker, and the request each one is serving."""

    def __init__(self):
        self.open: set = set()          # client sockets
        self.serving: dict = {}         # client socket -> the gunicorn request in progress
        self.closing = False            # from SIGTERM on: each response closes its connection

    def track(self, worker) -> None:
        """Wrap the worker's ``handle`` and ``handle_request`` to keep the sets up to date."""
        handle, handle_request = worker.handle, worker.handle_request

        def tracked_handle(listener, client, addr):
            self.open.add(client)
            try:
                return handle(listener, client, addr)
            finally:
                self.open.discard(client)

        def tracked_request(listener_name, req, sock, addr):
            self.serving[sock] = req
            if self.closing:
                req.force_close()
            try:
                return handle_request(listener_name, req, sock, addr)
            finally:
                self.serving.pop(sock, None)

        worker.handle, worker.handle_request = tracked_handle, tracked_request

    def close_after_response(self) -> None:
        """From now on, every response (those in flight too) closes its connection."""
        self.closing = True
        for req in self.serving.values():
            req.force_close()

    def close_when_done(self) -> int:
        """Close idle connections now and the others after their response; return the idle count."""
        self.close_after_response()
        idle = [sock for sock in self.open if sock not in self.serving]
        for sock in idle:
            _end_reading(sock)
        return len(idle)


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
    """Start the app of a freshly forked worker and take over its SIGHUP and SIGTERM."""
    app = worker.wsgi
    try:
        app.start()
    except StartupError as error:
        log.error("cannot start: %s", error)
        # gunicorn's WORKER_BOOT_ERROR: the arbiter stops instead of forking again and again.
        sys.exit(WORKER_BOOT_ERROR)
    tune_gc()
    connections = Connections()
    connections.track(worker)
    _spread_head_timeouts(worker)
    reload = Event()
    graceful_stop = signal.getsignal(signal.SIGTERM)      # gunicorn's own: stop accepting

    def on_term(signum, frame):
        app.draining = True          # flags and a spawn only: this runs in a signal handler
        connections.closing = True
        gevent.spawn(_shut_down, app.config.shutdown_delay, connections,
                     lambda: graceful_stop(signum, frame))

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
    worker.timeout_ctx = lambda: gevent.Timeout(header_deadline(keepalive), False)


GUNICORN_POLL = 1.0   # seconds: the worker's loop looks at ``alive`` this often


def _shut_down(delay: float, connections: Connections, stop_accepting: Callable[[], None]) -> None:
    """SIGTERM's sequence in a worker: serve on for ``delay``, then gunicorn's drain."""
    connections.close_after_response()
    if delay > 0:
        log.info("received SIGTERM: shutdown_delay: accepting for %.1fs more, "
                 "/health answers 503", delay)
        gevent.sleep(delay)
    stop_accepting()
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
    the body and write of the response, and a ``Connection: close`` from the app honoured.
    Elsewhere it passes straight through.

    Usage: ``app = ServerConnection(app)``; the timeout is the request's runtime's
    ``timeouts.client_idle`` (``environ["myproxy.runtime"]``), so a reload changes it.
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

        send_timeout = environ["myproxy.runtime"].config.timeouts.client_idle
        if send_timeout:
            # Each read of the body and each write of the response; gunicorn's own timer
            # (keepalive) covers the wait for the next request once this is undone.
            sock.settimeout(send_timeout)
        body = self.app(environ, start)
        if "myproxy.tunnel" in environ:
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
