"""gunicorn's internals, in one place: everything of gunicorn's beyond its settings and
hooks that the worker (``gunicorn_worker``), the master's checks (``gunicorn_master``)
and the tunnel hand-over rely on, for gunicorn 27.0.1 (``requirements-runtime.txt`` pins
it). ``tests/server/test_gunicorn_adapter.py`` pins each one by name on gunicorn's own
worker code and real sockets, so that a gunicorn bump that changes one fails there first.

Relied on:

- ``workers.ggevent.GeventWorker``: the base of MyProxy's ``Worker`` (which replaces its
  ``run`` and uses the base worker's ``alive``, ``notify``, ``sockets``, ``cfg``, ``wsgi``,
  ``worker_connections``, ``max_requests``, ``init_signals``, ``handle_exit``), and what
  the master accepts as a worker class that can serve MyProxy.
- ``AsyncWorker.timeout_ctx()``: made afresh around each wait for a request head in
  ``handle``'s keep-alive loop (one per request, and one for the wait that ends the
  connection); a ``gevent.Timeout(seconds, False)`` from it ends an idle connection
  quietly. Looked up on the worker, so an instance attribute replaces it
  (``time_request_waits``).
- ``AsyncWorker.handle(listener, client, addr)`` (one client connection, which it closes
  at the end) and ``handle_request(listener_name, req, sock, addr)`` (one request on it),
  looked up on the worker at each call (``watch_serving``).
- a parsed request's ``headers`` (a list of ``(NAME, value)``, names upper-cased) and
  ``force_close()`` (its connection closes after its response, which says
  ``Connection: close``), even when called while the response is under way.
- ``workers.base_async.ALREADY_HANDLED``: an app that returns it has written its response
  itself: gunicorn writes nothing for that request (then reads on for another, and a
  tunnel leaves the connection at its end, so it closes).
- the read-ahead of a request: ``wsgi.input`` (``http.body.Body``) has a ``reader``
  whose ``unreader`` (or, chunked, whose ``req.unreader``) is the connection's
  ``Unreader``; its ``take_buffered()`` returns the bytes read past the body, without
  reading more (``take_connection``).
- ``sock.ssl_context(cfg)``: the TLS context gunicorn serves with (the ``ssl_context``
  hook's, when the config has one).
- ``systemd.listen_fds(unset_environment=False)`` and the arbiter's ``master_pid``: the
  listening sockets come from systemd or from an old master (USR2), not from this one.
- ``Arbiter.WORKER_BOOT_ERROR`` (3): a worker that exits with it halts the arbiter
  instead of being forked again.

It knows nothing of proxying: what runs around each connection and request, and what
the app does with a connection it takes, is the caller's.
"""
from __future__ import annotations

from typing import Callable

from gunicorn.sock import ssl_context as _ssl_context
from gunicorn.workers.base_async import ALREADY_HANDLED
from gunicorn.workers.ggevent import GeventWorker

from ..wire.handoff import ClientConnection

WORKER_BOOT_ERROR = 3    # gunicorn's Arbiter.WORKER_BOOT_ERROR: a worker that exits so halts it

__all__ = ["ALREADY_HANDLED", "GeventWorker", "WORKER_BOOT_ERROR", "force_close",
           "header_values", "inherits_sockets", "ssl_context", "take_connection",
           "time_request_waits", "watch_serving"]


def ssl_context(cfg):
    """The TLS context gunicorn serves ``cfg``'s certificate with (its ``ssl_context``
    hook's, when the config sets one)."""
    return _ssl_context(cfg)


def time_request_waits(worker, timer: Callable) -> None:
    """Bound each wait of a gevent ``worker`` for a request head with ``timer()``, a
    context manager made afresh for each wait (gunicorn's own: one ``keepalive`` timeout)."""
    worker.timeout_ctx = timer


def watch_serving(worker, watcher) -> None:
    """Tell ``watcher`` about each client connection and each request ``worker`` serves:
    ``watcher.opened(client)`` and ``watcher.closed(client)`` around a connection,
    ``watcher.request_started(req, client)`` and ``watcher.request_done(client)`` around
    each request on it (``req`` is gunicorn's: see ``header_values``, ``force_close``)."""
    handle, handle_request = worker.handle, worker.handle_request

    def watched_handle(listener, client, addr):
        watcher.opened(client)
        try:
            return handle(listener, client, addr)
        finally:
            watcher.closed(client)

    def watched_request(listener_name, req, sock, addr):
        watcher.request_started(req, sock)
        try:
            return handle_request(listener_name, req, sock, addr)
        finally:
            watcher.request_done(sock)

    worker.handle, worker.handle_request = watched_handle, watched_request


def header_values(req, name: str) -> list[str]:
    """The values of the header field ``name`` in gunicorn's request ``req``, in order."""
    name = name.upper()
    return [value for field, value in req.headers if field == name]


def force_close(req) -> None:
    """Close ``req``'s connection after its response (in flight or to come)."""
    req.force_close()


def take_connection(sock, body) -> ClientConnection:
    """The client connection of a request under gunicorn's gevent worker, for a tunnel:
    ``sock`` (``gunicorn.socket``), the bytes gunicorn read past the request (from
    ``body``, the request's ``wsgi.input``) first, and gunicorn's marker for "written by
    the app" as what the app returns."""
    reader = getattr(body, "reader", None)
    unreader = getattr(reader, "unreader", None) or \
        getattr(getattr(reader, "req", None), "unreader", None)     # chunked: via the request
    pending = unreader.take_buffered() if hasattr(unreader, "take_buffered") else b""

    def read(size: int) -> bytes:
        nonlocal pending
        if pending:
            data, pending = pending[:size], pending[size:]
            return data
        return sock.recv(size)

    return ClientConnection(sock, read, ALREADY_HANDLED)


def inherits_sockets(arbiter) -> bool:
    """Whether ``arbiter``'s listening sockets come from systemd or from an old master
    (after USR2), not from binding them itself."""
    from gunicorn import systemd
    return bool(arbiter.master_pid or systemd.listen_fds(unset_environment=False))
