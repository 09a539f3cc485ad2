"""MyProxy inside a gunicorn gevent worker: start after the fork, reload on SIGHUP, drain on SIGTERM.

``gunicorn.conf.py``'s ``post_worker_init`` hook calls ``start_worker(worker)``, which makes
a worker behave as ``python wsgi.py`` does (``app.server``):

- the app's background work starts in the worker, after the fork (STACK-FACTS 22);
- SIGHUP (sent by the master, see ``gunicorn.conf.py``) re-reads the config file in place;
- SIGTERM sets ``App.draining`` at once, then gunicorn stops accepting and waits for the
  requests in flight. gunicorn would also wait for every idle keep-alive connection until
  its ``keepalive`` timeout, and would keep a connection open after a response that was
  in flight: so idle connections are closed at once, and requests in flight are marked
  to close their connection when their response ends (with ``Connection: close`` when
  their headers are still to be sent).

It relies on two methods every gunicorn async worker has, ``handle`` (one client
connection) and ``handle_request`` (one request on it), which it wraps to know which
connections are idle. It knows nothing of proxying.
"""
from __future__ import annotations

import logging
import os
import signal
import socket

import gevent
from gevent.event import Event

from .server import reload_on, tune_gc

log = logging.getLogger("myproxy.server")


class Connections:
    """The client connections of one gunicorn worker, and the request each one is serving."""

    def __init__(self):
        self.open: set = set()          # client sockets
        self.serving: dict = {}         # client socket -> the gunicorn request in progress

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
            try:
                return handle_request(listener_name, req, sock, addr)
            finally:
                self.serving.pop(sock, None)

        worker.handle, worker.handle_request = tracked_handle, tracked_request

    def close_when_done(self) -> int:
        """Close idle connections now and the others after their response; return the idle count."""
        for req in self.serving.values():
            req.force_close()
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
    app.start()
    tune_gc()
    connections = Connections()
    connections.track(worker)
    reload = Event()
    graceful_stop = signal.getsignal(signal.SIGTERM)      # gunicorn's own: stop accepting

    def on_term(signum, frame):
        app.draining = True          # flags and a spawn only: this runs in a signal handler
        gevent.spawn(_drain, connections)
        graceful_stop(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    # Kept on the worker: a signal watcher that is garbage-collected stops watching.
    worker.myproxy = [gevent.signal_handler(signal.SIGHUP, reload.set),
                      gevent.spawn(reload_on, reload, app), connections]
    log.info("worker %d ready: SIGHUP reloads the config, SIGTERM drains", os.getpid())


def _drain(connections: Connections) -> None:
    log.info("received SIGTERM: draining, %d connection(s) open, %d idle closed",
             len(connections.open), connections.close_when_done())
