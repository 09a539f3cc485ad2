"""Standalone serving: the pywsgi server, signals, and the graceful drain.

``Server`` is gevent's ``WSGIServer`` with MyProxy's handler (``app.server.handler``: each
connection's requests read strictly and answered there), a listen backlog for bursts, the
connections it holds, the settings in force (``live``: a reload changes them for the next
request), our logging instead of pywsgi's, the garbage collector's settings for serving
(``tune_gc``), and a shutdown sequence with a deadline (below). With ``tls``, the port
speaks TLS through ``app.server.tls.Terminator`` (gevent calls its ``wrap_socket`` in
each connection's greenlet), and a second, plain server on ``tls.redirect_from`` answers
with redirects (``app.middleware.redirect``).

The shutdown sequence:

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
from types import SimpleNamespace
from typing import Callable

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from ..config import LimitsConfig, TimeoutsConfig
from ..errors import ListenError
from .connection import SlowHeads
from .handler import Handler
from .shutdown import Shutdown

log = logging.getLogger("myproxy.server")

LISTEN_BACKLOG = 2048       # pending connections the kernel queues before accept()
GC_THRESHOLDS = (10_000, 10, 10)   # see tune_gc


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
                 live=None, tls=None, shutdown: Shutdown | None = None):
        """``live`` holds the runtime in force (``App.live``), whose ``config`` each request
        reads its ``limits`` and ``timeouts`` from; without it, those two are fixed. ``tls``
        (an app.server.tls.Terminator) is what gevent calls ``wrap_socket`` on, in each
        connection's greenlet, before the handler runs. ``shutdown`` is the process's
        (``App.shutdown``), which SIGTERM moves on; without it, the server's own."""
        ssl_args = {"ssl_context": tls} if tls is not None else {}
        super().__init__(listener, application, spawn=Pool(max_connections), log=None,
                         error_log=LoggingLogAdapter(log, logging.ERROR), **ssl_args)
        self.live = live or SimpleNamespace(runtime=SimpleNamespace(
            config=SimpleNamespace(limits=limits, timeouts=timeouts)))
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
        return self.live.runtime.config.limits

    @property
    def timeouts(self) -> TimeoutsConfig:
        return self.live.runtime.config.timeouts

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
                    live=app.live, tls=tls, shutdown=app.shutdown)
    listen(server, config.host, config.port)
    servers = [server]
    if tls is not None and config.tls.redirect_from:
        # The plain-HTTP listener of tls.redirect_from: the same app, which answers what
        # did not come over TLS with a 308 (app.middleware.redirect).
        redirect = Server((config.host, config.tls.redirect_from), app,
                          max_connections=config.limits.max_connections,
                          live=app.live, shutdown=app.shutdown)
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
