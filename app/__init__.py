"""MyProxy: an HTTP/1.1 load balancer as a WSGI application.

``create_app(config)`` is the composition root: it builds every part and wires them, and
starts nothing. The returned ``App`` is the WSGI callable: it makes the request's
``Request`` and sends a path under ``admin.prefix`` to the admin surface
(``middleware.admin``), every other to the proxy (``proxy``), each under the request log and
metrics (``middleware.access``).
``App.start()`` starts its background work (each pool's DNS discovery, after a first
bounded round of lookups; each pool's health checker; in multiprocess mode the gauge
refresher) and ``App.stop()`` stops it. Servers call those:
``app.server`` under ``python wsgi.py``, ``gunicorn.conf.py`` in each worker.

Config reaches a request one way: ``App`` holds the runtime in force (``app.lb.routes``:
the config, the route table, each route's pool) and puts it in the request's ``Request``
(``app.request``, the one environ key of a request's state) once, at its start; every
layer reads its settings there.
``App.reload(config)`` builds the next runtime and swaps that one reference (SIGHUP calls
``reload_file``; the admin API ``reload_from_file``). Admin states (drain, maint, run-time
weights: ``app.lb.overrides``) live in a store apart from the config, applied to each
runtime's backends. With ``cluster.redis``, ``app.lb.cluster.Cluster`` links the instance to
the deployment's Redis: the admin states' store, each limited pool's ``SharedLimit`` and the
ejections go through it (``App.start`` starts its loop, after any fork).

The parts are imported inside ``create_app``, not here: ``gunicorn.conf.py`` imports
``app.config`` in gunicorn's master, before the worker monkey-patches gevent, and requests
or urllib3 imported there break HTTPS upstreams in every worker (STACK-FACTS 12).
"""
from __future__ import annotations

import logging
import os

from gevent.lock import Semaphore

from .config import Config, ConfigError, load
from .request import KEY as REQUEST, Request
from .server.shutdown import Shutdown

__version__ = "0.1.0"      # myproxy_build_info's version

log = logging.getLogger("myproxy")


class App:
    """The load balancer: a WSGI callable with a start/stop life cycle and live reload.

    ``live`` holds the one reference to the runtime in force (``app.lb.routes.Runtime``:
    the config, the route table, each route's pool). Each request takes it once, at its
    start, as ``environ["myproxy.request"].runtime`` (``app.request``), and every layer reads its
settings there.
    """

    def __init__(self, live, upstream, metrics, admin_states, tls=None, rates=None,
                 cluster=None):
        self.live = live
        # With `cluster.redis`: app.lb.cluster.Cluster, what this instance shares with the
        # others through Redis (rate limits, admin states, ejections); else None.
        self.cluster = cluster
        # Drain, maint and run-time weights set through the admin API: app.lb.overrides'
        # AdminStates, over the group's file under gunicorn, else this process's memory.
        self.admin_states = admin_states
        self.tls = tls             # app.server.tls.Terminator with `tls:` in the config, else None
        self.upstream = upstream
        self.metrics = metrics
        # The WSGI callables a request goes to (create_app sets them): the proxy's and the
        # admin surface's, each under the request log; _wsgi is what __call__ calls (wrap).
        self._proxied = self._admin = None
        self._wsgi = self._dispatch
        self.shutdown = Shutdown()  # SIGTERM's phases, shared with the servers (app.server.shutdown)
        # Settings the server running the app bound at its start, beyond
        # reload.FIXED_AT_START: a reload keeps them and says so (set by the server).
        self.fixed_by_server: tuple[str, ...] = ()
        # Under a gunicorn group (app.lb.shared.GroupView): the leader runs every pool's
        # health checks, the others follow it. None: this process checks its own.
        self.group = None
        # Under a gunicorn group: the group's slot table (app.server.slots), so max_conns
        # holds for the group. None: each pool counts in this process.
        self.slots = None
        self.started = False
        self._reloading = Semaphore()
        # What build_runtime is handed at every reload: health results to the metrics,
        # DNS members added and removed to the upstream, health checks and metrics, and
        # the one table of rate-limit keys (app.lb.ratelimit), so that a reload keeps them.
        self._hooks = dict(on_check=metrics.health_checked, on_added=self._members_added,
                           on_removed=self._members_removed, rates=rates, cluster=cluster)

    @property
    def draining(self) -> bool:
        """From SIGTERM on: ``/_myproxy/health`` answers 503."""
        return self.shutdown.closing

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

    @property
    def discovery(self):
        return self.pool.discovery

    def __call__(self, environ, start_response):
        environ[REQUEST] = Request(runtime=self.live.runtime)
        return self._wsgi(environ, start_response)

    def _dispatch(self, environ, start_response):
        """A path under ``admin.prefix`` (the prefix itself or under it) to the admin
        surface, every other to the proxy; each through the request log."""
        prefix = environ[REQUEST].runtime.config.admin.prefix
        path = environ.get("PATH_INFO", "")
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return self._admin(environ, start_response)
        return self._proxied(environ, start_response)

    def wrap(self, layer) -> None:
        """Put ``layer`` (a WSGI middleware class) outermost, under the request's start: what
        a server needs of the app that only it knows (``gunicorn_worker.ServerConnection``
        under the stock gevent worker)."""
        self._wsgi = layer(self._wsgi)

    def start(self) -> None:
        """Start background work; call once per process, after any fork.

        Raises ``StartupError`` when a pool's backends are to come from DNS and no lookup
        found one within ``resolver.timeout``."""
        from .lb.routes import resolve_at_start, start_pools
        resolve_at_start(self.runtime)
        if self.cluster is not None:
            self.cluster.start()             # the shared admin states, before serving
        self.started = True
        start_pools(self.runtime, checks=self.group is None)
        if self.group is not None:
            self.group.start()               # follows the group before it serves
            self.group.want_checks(True)     # the checks run in the leader only
        if self.slots is not None:
            self.slots.start(self._slot_freed)
        self.metrics.start()

    def stop(self) -> None:
        """Stop background work and close upstream connections; safe to call twice."""
        from .lb.routes import stop_pools
        self.started = False
        if self.group is not None:
            self.group.want_checks(False)
            self.group.stop()
        stop_pools(self.runtime)
        if self.slots is not None:
            self.slots.stop()
        self.metrics.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.upstream.close()

    def drain_queues(self) -> None:
        """A drain has begun (SIGTERM): every request waiting in a pool's queue for a slot
        (``max_conns``) is answered 503 now, well before ``shutdown_timeout``, and nothing
        waits from now on (a queued request has reached no backend: its client may retry
        elsewhere)."""
        for pool in self.runtime.pools:
            pool.capacity.close()

    def reload(self, new: Config, certificates=None) -> list[str]:
        """Apply ``new`` to the running proxy without dropping a request; return what changed
        (``apply_config`` also says what it kept for a restart).

        Everything but ``host``, ``port``, ``limits.max_connections`` and whether the port
        speaks TLS (bound when the server started) takes effect from the next request: a new
        runtime is built and swapped in one assignment; TLS certificates (``certificates``,
        loaded by ``reload_file``, else loaded here) from the next handshake. A route kept
        by name (the default pool is ``default``) keeps the health state and counters of the
        backends whose URLs stay; requests in flight, to a removed backend or route too,
        finish on the runtime they started with. Admin states (drain, maint, run-time
        weights) stay for the backends still configured.
        """
        return self.apply_config(new, certificates)[0]

    def apply_config(self, new: Config, certificates=None) -> tuple[list[str], list[str]]:
        """``reload``: what changed, and the settings kept for a restart."""
        from .lb.routes import apply_fresh, build_runtime, lookup_fresh, start_pools
        from .reload import changes, fixed_at_start

        old = self.runtime
        new, kept = fixed_at_start(old.config, new, self.fixed_by_server)
        changed = changes(old.config, new)
        if self.tls is not None and new.tls is not None:
            certificates = certificates or self.tls.prepare(new.tls)
            changed += self.tls.changes(certificates)    # renewed files, with their new expiry
        # DNS names that are new (or looked up more or less often) are resolved first, so
        # that they have members from the first request the new runtime serves.
        prepared = lookup_fresh(old, new)
        runtime = build_runtime(new, self.upstream, previous=old, **self._hooks)
        apply_fresh(runtime, prepared)
        self.admin_states.retain(runtime.balancers)
        self.admin_states.apply(runtime.balancers)
        self.metrics.prepare(runtime)
        self.live.runtime = runtime          # the one swap: from the next request on
        if self.tls is not None and new.tls is not None:
            self.tls.install(certificates, new.tls)

        in_use = {b.origin for pool in runtime.pools for b in pool.backends}
        for origin in {b.origin for pool in old.pools for b in pool.backends} - in_use:
            self.upstream.forget(origin)
        if self.started:
            start_pools(runtime, previous=old, checks=self.group is None)   # first rounds at once
            if self.group is not None:
                self.group.want_checks(True)     # the leader checks the new pools at once
        else:
            for pool in old.pools:
                pool.health.stop()
        if (new.log_level, new.log_format) != (old.config.log_level, old.config.log_format):
            from .logs import configure_logging
            configure_logging(new.log_level, new.log_format)

        self.metrics.config_reloaded("success")
        log.info("config reloaded: %s%s", "; ".join(changed) or "no changes",
                 f" (not applied, needs a restart: {', '.join(kept)})" if kept else "")
        return changed, kept

    def _slot_freed(self, route: str) -> None:
        """Another worker of the group freed a slot of ``route`` while requests wait here."""
        pool = self.live.runtime.pool(route)
        if pool is not None:
            pool.capacity.offer()

    def _members_added(self, route: str, added) -> None:
        """Members DNS just gave a pool: their TLS name is the DNS name, and they are
        checked at once."""
        for backend in added:
            if backend.server_name:
                self.upstream.name_origin(backend.origin, backend.server_name)
        pool = self.live.runtime.pool(route) if self.live.runtime is not None else None
        if pool is not None:
            self.admin_states.apply({route: pool.balancer})    # a member drained before it left
            if pool.health.running:
                pool.health.wake()

    def _members_removed(self, route: str, gone) -> None:
        """Members gone from DNS whose last request is done: their idle connections are
        closed and their metric series dropped (a label lives only as long as its member)."""
        in_use = {b.origin for pool in self.live.runtime.pools for b in pool.backends}
        for backend in gone:
            if backend.origin not in in_use:
                self.upstream.forget(backend.origin)
            self.metrics.forget(route, backend.url)

    def reload_file(self) -> bool:
        """Re-read the config file and apply it (SIGHUP). Returns whether it was applied;
        ``reload_from_file`` says why not."""
        try:
            self.reload_from_file()
        except ConfigError:
            return False
        return True

    def reload_from_file(self) -> tuple[list[str], list[str]]:
        """Re-read the config file and apply it (SIGHUP, the admin API's reload); return
        what changed and what needs a restart (``apply_config``).

        A file with errors is refused with the same message as at start-up, logged and
        counted, and the running config stays: the ``ConfigError`` is raised. So is a TLS
        certificate that cannot be served (missing, unreadable, not matching its key): the
        certificate files are read again on every reload, as certbot renews them in place.
        An expired or not yet valid certificate does not refuse the reload: it is logged as
        an ERROR.
        """
        with self._reloading:
            try:
                new = load(self.config.source)
                certificates = None
                if self.tls is not None and new.tls is not None:
                    certificates = self.tls.prepare(new.tls)
            except ConfigError as error:
                self.metrics.config_reloaded("failure")
                log.error("config reload refused, the running config stays: %s", error)
                raise
            return self.apply_config(new, certificates)


def create_app(config: Config, session=None, metrics_dir: str | None = None,
               group_dir: str | None = None) -> App:
    """Build the load balancer described by ``config``. Starts nothing.

    ``metrics_dir`` (default ``$PROMETHEUS_MULTIPROC_DIR``) puts the metrics in
    prometheus_client's multiprocess mode, so that gunicorn workers add up. ``group_dir``
    (default ``$MYPROXY_GROUP_DIR``, set by ``gunicorn.conf.py``) makes the workers of a
    gunicorn group share one view of the backends (``app.lb.shared``).
    """
    from .lb.overrides import AdminStates, FileStore, MemoryStore
    from .middleware.admin import Admin
    from .middleware.api import AdminApi
    from .lb.ratelimit import open_table
    from .lb.routes import RuntimeHolder, build_runtime
    from .middleware.metrics import Metrics
    from .middleware.access import RequestLog
    from .proxy.proxy import Proxy
    from .middleware.status import Status
    from .proxy.transport import Upstream, make_session

    upstream = Upstream(session or make_session())
    live = RuntimeHolder(None)
    tls = None
    if config.tls is not None:
        from .server.tls import Terminator
        live.runtime = _Bare(config)     # what the Terminator reads before the runtime is built
        tls = Terminator(live)           # raises ConfigError for a certificate it cannot serve
    metrics = Metrics(live, metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
                      certificate_expiry=tls.expiry if tls is not None else None)
    if tls is not None:
        tls.on_refused = metrics.tls_refused
    group_dir = group_dir or os.environ.get("MYPROXY_GROUP_DIR")
    cluster = None
    if config.cluster.enabled:
        # Several instances: rate limits, admin states and ejections shared through Redis.
        from .lb.cluster import Cluster, RedisStore
        cluster = Cluster(config.cluster, lambda: live.runtime.balancers, on_up=metrics.cluster_up,
                          apply=lambda: app.admin_states.apply(live.runtime.balancers))
        metrics.cluster_up(False)        # until Redis first answers
        store = RedisStore(cluster)
    else:
        store = FileStore(group_dir) if group_dir else MemoryStore()
    # The group's rate-limit keys are one file its workers share; alone, this process's
    # (with a cluster: the fallback of the limits kept in Redis).
    app = App(live, upstream, metrics, AdminStates(store), tls=tls,
              rates=open_table(group_dir), cluster=cluster)
    if group_dir:
        from .server.slots import SlotTable
        app.slots = app._hooks["slots"] = SlotTable(group_dir)   # max_conns for the group
    live.runtime = build_runtime(config, upstream, **app._hooks)
    app.admin_states.apply(live.runtime.balancers)    # a replaced worker: the group's states
    metrics.prepare(live.runtime)
    proxy = Proxy(upstream)
    if group_dir:
        app.group = _group_view(live, metrics, group_dir, app.admin_states)
        if cluster is not None:
            cluster.leading = lambda: app.group.leading    # the others follow the leader
    status = Status(metrics, draining=lambda: app.draining,
                    certificates=tls.describe if tls is not None else None, group=app.group,
                    cluster=cluster)
    api = AdminApi(app, metrics)
    admin = Admin(status, metrics, draining=lambda: app.draining, api=api)
    if config.tls is not None and config.tls.redirect_from:
        from .middleware.redirect import HTTPSRedirect
        proxy, admin = HTTPSRedirect(proxy), HTTPSRedirect(admin)   # the plain listener's answer
    app._proxied, app._admin = RequestLog(proxy, metrics), RequestLog(admin, metrics)
    return app



class _Bare:
    """A config in the runtime's place, for what reads ``holder.config`` while the first
    runtime is being built (the TLS terminator loads its certificates first: a certificate
    it cannot serve stops the start before anything else is made)."""

    def __init__(self, config: Config):
        self.config = config


def _group_view(live, metrics, group_dir: str, admin_states):
    """The shared view of a gunicorn group over the pools of the runtime in force."""
    from .lb.shared import GroupView
    from .middleware.metrics import NO_BACKEND
    from .server.group import ProcessGroup

    def counts(pool: str, backend):      # what /status counts for a backend, in this worker
        traffic = metrics.traffic(pool, backend.url)
        return traffic.requests, traffic.errors

    def unrouted() -> int:               # this worker's requests that found no backend
        return sum(traffic.requests for traffic in
                   (metrics.seen(pool.name, NO_BACKEND) for pool in live.runtime.pools)
                   if traffic is not None)

    return GroupView(lambda: live.runtime.balancers,
                     ProcessGroup(group_dir), _AllChecks(live), counts=counts,
                     unrouted=unrouted,
                     budgets=lambda: {pool.name: pool.budget for pool in live.runtime.pools},
                     admin=admin_states)


class _AllChecks:
    """Every pool's health checker of the runtime in force, as the one checker a group's
    leader runs (``GroupView.want_checks``)."""

    def __init__(self, live):
        self.live = live

    def start(self) -> None:
        for pool in self.live.runtime.pools:
            pool.health.start()

    def stop(self) -> None:
        for pool in self.live.runtime.pools:
            pool.health.stop()

    def wake(self) -> None:
        for pool in self.live.runtime.pools:
            if pool.health.running:
                pool.health.wake()
