"""MyProxy: an HTTP/1.1 load balancer as a WSGI application.

``create_app(config)`` is the composition root: it builds every part and wires them, and
starts nothing. The returned ``App`` is the WSGI callable: request log and metrics
(``middleware``) around the admin surface (``admin``) around the proxy (``proxy``).
``App.start()`` starts its background work (the health checker, and in multiprocess mode
the gauge refresher) and ``App.stop()`` stops it. Servers call those:
``app.server`` under ``python wsgi.py``, ``gunicorn.conf.py`` in each worker.
``App.reload(config)`` applies a new config to the running parts (SIGHUP calls
``reload_file``).

The parts are imported inside ``create_app``, not here: ``gunicorn.conf.py`` imports
``app.config`` in gunicorn's master, before the worker monkey-patches gevent, and requests
or urllib3 imported there break HTTPS upstreams in every worker (STACK-FACTS 12).
"""
from __future__ import annotations

import logging
import os

from gevent.lock import Semaphore

from .config import Config, ConfigError, ConfigHolder, load

log = logging.getLogger("myproxy")


class App:
    """The load balancer: a WSGI callable with a start/stop life cycle and live reload."""

    def __init__(self, settings: ConfigHolder, balancer, upstream, health, metrics, wsgi=None):
        self.settings = settings
        self.balancer = balancer
        self.upstream = upstream
        self.health = health
        self.metrics = metrics
        self._wsgi = wsgi
        self.draining = False      # set on SIGTERM: /_myproxy/health answers 503
        # Settings the server running the app bound at its start, beyond
        # reload.FIXED_AT_START: a reload keeps them and says so (set by the server).
        self.fixed_by_server: tuple[str, ...] = ()
        self.started = False
        self._reloading = Semaphore()

    @property
    def config(self) -> Config:
        """The config in force; a reload replaces it."""
        return self.settings.config

    def __call__(self, environ, start_response):
        return self._wsgi(environ, start_response)

    def start(self) -> None:
        """Start background work; call once per process, after any fork."""
        self.started = True
        self.health.start()
        self.metrics.start()

    def stop(self) -> None:
        """Stop background work and close upstream connections; safe to call twice."""
        self.started = False
        self.health.stop()
        self.metrics.stop()
        self.upstream.close()

    def reload(self, new: Config) -> list[str]:
        """Apply ``new`` to the running proxy without dropping a request; return what changed.

        Everything but ``host``, ``port`` and ``limits.max_connections`` (bound when the
        server started) takes effect from the next request. A backend whose URL stays keeps
        its health state and counters; requests in flight to a removed backend finish.
        """
        from .reload import changes, fixed_at_start

        old = self.config
        new, kept = fixed_at_start(old, new, self.fixed_by_server)
        changed = changes(old, new)
        # The balancer swaps its backends under its lock, and nothing yields between that
        # and the config swap: no request sees the new backends with the old settings.
        removed = self.balancer.reload(new.backends, new.policy, new.slow_start,
                                       probed=new.health_check.enabled)
        self.settings.config = new

        in_use = {backend.origin for backend in self.balancer.backends}
        for origin in {backend.origin for backend in removed} - in_use:
            self.upstream.forget(origin)
        if old.health_check.enabled and not new.health_check.enabled:
            for backend in self.balancer.backends:
                backend.assume_healthy()     # no checks now: nothing else would bring it back
        if self.started:
            if new.health_check.enabled:
                self.health.start()
                self.health.wake()           # check added backends and new rules at once
            else:
                self.health.stop()
        if (new.log_level, new.log_format) != (old.log_level, old.log_format):
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


def create_app(config: Config, session=None, metrics_dir: str | None = None,
               group_dir: str | None = None) -> App:
    """Build the load balancer described by ``config``. Starts nothing.

    ``metrics_dir`` (default ``$PROMETHEUS_MULTIPROC_DIR``) puts the metrics in
    prometheus_client's multiprocess mode, so that gunicorn workers add up. ``group_dir``
    (default ``$MYPROXY_GROUP_DIR``, set by ``gunicorn.conf.py``) makes the workers of a
    gunicorn group share one view of the backends (``app.lb.shared``).
    """
    from .middleware.admin import Admin
    from .lb.balancer import Backend, Balancer
    from .lb.health import HealthChecker
    from .middleware.metrics import Metrics
    from .middleware.access import RequestLog
    from .server.gunicorn_worker import ServerConnection
    from .proxy.proxy import Proxy
    from .middleware.status import Status
    from .proxy.upstream import Upstream, make_session

    settings = ConfigHolder(config)
    backends = [Backend(backend, probed=config.health_check.enabled) for backend in config.backends]
    balancer = Balancer(backends, config.policy, slow_start=config.slow_start)
    pools = max(16, 2 * len(backends))
    upstream = Upstream(settings, session or make_session(pools=pools))
    metrics = Metrics(balancer, metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    health = HealthChecker(balancer, settings, upstream, on_result=metrics.health_checked)
    proxy = Proxy(settings, balancer, upstream)
    group_dir = group_dir or os.environ.get("MYPROXY_GROUP_DIR")
    view = None
    if group_dir:
        from .lb.shared import DEFAULT_POOL, GroupView, HealthGate
        from .middleware.metrics import NO_BACKEND
        from .server.group import ProcessGroup
        def counts(backend):         # what /status counts for a backend, in this worker
            traffic = metrics.traffic(backend.url)
            return traffic.requests, traffic.errors

        view = GroupView(lambda: {DEFAULT_POOL: balancer}, ProcessGroup(group_dir), health,
                         proxy.budget, counts=counts,
                         unrouted=lambda: metrics.traffic(NO_BACKEND).requests)
        health = HealthGate(health, view)
    app = App(settings, balancer, upstream, health, metrics)
    if view is not None:
        health.app_started = lambda: app.started
    status = Status(settings, balancer, metrics, draining=lambda: app.draining, group=view)
    admin = Admin(proxy, settings, status, metrics, draining=lambda: app.draining)
    app._wsgi = ServerConnection(RequestLog(admin, settings, metrics), settings)
    return app
