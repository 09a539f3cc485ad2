"""MyProxy: an HTTP/1.1 load balancer as a WSGI application.

``create_app(config)`` is the composition root: it builds every part and wires them, and
starts nothing. The returned ``App`` is the WSGI callable: request log and metrics
(``middleware``) around the admin surface (``admin``) around the proxy (``proxy``).
``App.start()`` starts its background work (each pool's health checker, and in
multiprocess mode the gauge refresher) and ``App.stop()`` stops it. Servers call those:
``app.server`` under ``python wsgi.py``, ``gunicorn.conf.py`` in each worker.

Config reaches a request one way: ``App`` holds the runtime in force (``app.lb.routes``:
the config, the route table, each route's pool) and puts it in the request's environ
(``myproxy.runtime``) once, at its start; every layer reads its settings there.
``App.reload(config)`` builds the next runtime and swaps that one reference (SIGHUP calls
``reload_file``).

The parts are imported inside ``create_app``, not here: ``gunicorn.conf.py`` imports
``app.config`` in gunicorn's master, before the worker monkey-patches gevent, and requests
or urllib3 imported there break HTTPS upstreams in every worker (STACK-FACTS 12).
"""
from __future__ import annotations

import logging
import os

from gevent.lock import Semaphore

from .config import Config, ConfigError, load

log = logging.getLogger("myproxy")


class App:
    """The load balancer: a WSGI callable with a start/stop life cycle and live reload.

    ``live`` holds the one reference to the runtime in force (``app.lb.routes.Runtime``:
    the config, the route table, each route's pool). Each request takes it once, at its
    start, as ``environ["myproxy.runtime"]``, and every layer reads its settings there.
    """

    def __init__(self, live, upstream, metrics, wsgi=None):
        self.live = live
        self.upstream = upstream
        self.metrics = metrics
        self._wsgi = wsgi
        self.draining = False      # set on SIGTERM: /_myproxy/health answers 503
        self.started = False
        self._reloading = Semaphore()

    @property
    def runtime(self):
        """The runtime in force; a reload replaces it whole."""
        return self.live.runtime

    @property
    def config(self) -> Config:
        """The config in force; a reload replaces it."""
        return self.live.runtime.config

    @property
    def pool(self):
        """The default pool (top-level ``backends``), else the first route's."""
        runtime = self.live.runtime
        return runtime.default or runtime.pools[0]

    @property
    def balancer(self):
        return self.pool.balancer

    @property
    def health(self):
        return self.pool.health

    def __call__(self, environ, start_response):
        environ["myproxy.runtime"] = self.live.runtime
        return self._wsgi(environ, start_response)

    def start(self) -> None:
        """Start background work; call once per process, after any fork."""
        from .lb.routes import start_pools
        self.started = True
        start_pools(self.runtime)
        self.metrics.start()

    def stop(self) -> None:
        """Stop background work and close upstream connections; safe to call twice."""
        from .lb.routes import stop_pools
        self.started = False
        stop_pools(self.runtime)
        self.metrics.stop()
        self.upstream.close()

    def reload(self, new: Config) -> list[str]:
        """Apply ``new`` to the running proxy without dropping a request; return what changed.

        Everything but ``host``, ``port`` and ``limits.max_connections`` (bound when the
        server started) takes effect from the next request: a new runtime is built and
        swapped in one assignment. A route kept by name (the default pool is ``default``)
        keeps the health state and counters of the backends whose URLs stay; requests in
        flight, to a removed backend or route too, finish on the runtime they started with.
        """
        from .lb.routes import build_runtime, start_pools
        from .reload import changes, fixed_at_start

        old = self.runtime
        new, kept = fixed_at_start(old.config, new)
        changed = changes(old.config, new)
        runtime = build_runtime(new, self.upstream, previous=old,
                                on_check=self.metrics.health_checked)
        self.metrics.prepare(runtime)
        self.live.runtime = runtime          # the one swap: from the next request on

        in_use = {b.origin for pool in runtime.pools for b in pool.backends}
        for origin in {b.origin for pool in old.pools for b in pool.backends} - in_use:
            self.upstream.forget(origin)
        if self.started:
            start_pools(runtime, previous=old)   # the first round of each at once
        else:
            for pool in old.pools:
                pool.health.stop()
        if (new.log_level, new.log_format) != (old.config.log_level, old.config.log_format):
            from .logs import configure_logging
            configure_logging(new.log_level, new.log_format)

        self.metrics.config_reloaded("success")
        log.info("config reloaded: %s%s", "; ".join(changed) or "no changes",
                 f" (not applied, needs a restart: {', '.join(kept)})" if kept else "")
        return changed

    def reload_file(self) -> bool:
        """Re-read the config file and apply it (SIGHUP). Returns whether it was applied.

        A file with errors is refused with the same message as at start-up, logged and
        counted, and the running config stays.
        """
        with self._reloading:
            try:
                new = load(self.config.source)
            except ConfigError as error:
                self.metrics.config_reloaded("failure")
                log.error("config reload refused, the running config stays: %s", error)
                return False
            self.reload(new)
            return True


def create_app(config: Config, session=None, metrics_dir: str | None = None) -> App:
    """Build the load balancer described by ``config``. Starts nothing.

    ``metrics_dir`` (default ``$PROMETHEUS_MULTIPROC_DIR``) puts the metrics in
    prometheus_client's multiprocess mode, so that gunicorn workers add up.
    """
    from .middleware.admin import Admin
    from .lb.routes import RuntimeHolder, build_runtime
    from .middleware.metrics import Metrics
    from .middleware.access import RequestLog
    from .server.gunicorn_worker import ServerConnection
    from .proxy.proxy import Proxy
    from .middleware.status import Status
    from .proxy.upstream import Upstream, make_session

    members = sum(len(pool.backends) for pool in config.pools)
    upstream = Upstream(session or make_session(pools=max(16, 2 * members)))
    live = RuntimeHolder(None)
    metrics = Metrics(live, metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    live.runtime = build_runtime(config, upstream, on_check=metrics.health_checked)
    metrics.prepare(live.runtime)
    proxy = Proxy(upstream)
    app = App(live, upstream, metrics)
    status = Status(metrics, draining=lambda: app.draining)
    admin = Admin(proxy, status, metrics, draining=lambda: app.draining)
    app._wsgi = ServerConnection(RequestLog(admin, metrics))
    return app
