"""Routes: which pool a request belongs to, each pool's machinery, and the runtime in force.

- ``Pool`` is one route's unit: its settings (``RouteConfig``), its ``Balancer`` of
  ``Backend`` objects, its ``HealthChecker``, its ``Discovery`` (the entries found through
  DNS), its ``RetryBudget``, its ``Capacity`` (max_conns and the queue), its upstream
  timeout, its sticky cookie (``Sticky``) and its ``RateLimit`` (or None; with
  ``cluster``, a ``SharedLimit`` in front of it).
  The same backend URL in two routes is two ``Backend`` objects with separate state, and a
  request of one pool is only ever sent to that pool's backends.
- ``RouteTable.match(host, path)`` picks the pool: routes in precedence order (an exact
  host, then wildcards longest first, then any host; within one host rule, the longest
  path prefix), then the default pool (the top-level ``backends``), else None. Hosts and
  each host rule's prefixes (by their first segment) are looked up in dicts, so a hundred
  routes cost a few dict lookups and a prefix comparison or two per request.
- ``Runtime`` is what a reload builds and swaps whole: the config, the table and the
  pools, frozen. A request takes ``RuntimeHolder.runtime`` once, at its start, and uses
  that one to its end (``app.request.Request.runtime``); nothing reads the config another way.
- ``build_runtime(config, previous)`` makes the next runtime: a route kept by name keeps
  the ``Backend`` objects (health, counters, in flight) of the URLs it keeps, the members
  DNS gave its entries that stay, its discovery, its retry budget and its ``Capacity``
  (with the requests waiting in its queue), and, through the one ``RateTable`` every
  runtime shares, its rate-limit keys; a removed route's pool is left to the requests
  that hold it.

Paths are matched raw, byte for byte, never decoded: ``/%61pi`` is not ``/api``. It
imports only the balancer's package and the config.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import gevent

from ..config import DEFAULT_ROUTE, Config, RouteConfig
from ..errors import StartupError
from .balancer import Backend, Balancer
from .capacity import Capacity, RetryBudget
from .discovery import Discovery
from .health import HealthChecker
from .cluster import SharedLimit
from .ratelimit import RateLimit, RateTable
from .sticky import Sticky


class Pool:
    """One route's backends and what chooses among them, checks them and caps retries."""

    def __init__(self, settings: RouteConfig, balancer: Balancer, health: HealthChecker,
                 budget: RetryBudget, discovery: Discovery | None = None,
                 capacity: Capacity | None = None, rates: RateTable | None = None,
                 cluster=None):
        self.settings = settings
        self.rewrites = bool(settings.strip_prefix and settings.path)   # see rewrite
        # Each backend's max_conns slots and the pool's queue: how a request gets a backend.
        self.capacity = capacity or Capacity(settings.name, balancer, settings.queue)
        self.name = settings.name
        self.balancer = balancer
        self.health = health
        self.budget = budget
        self.discovery = discovery
        timeouts = settings.timeouts
        self.upstream_timeout = timeouts   # its connect and read, for the transport
        # The request's hash key is computed only for the hash policy (nothing per request else).
        self.hash_key = settings.hash_key if settings.policy == "hash" else None
        self.sticky = Sticky(settings.sticky) if settings.sticky.enabled else None   # None: off
        # None when off: a request then pays one attribute test.
        limit = settings.rate_limit
        self.limit = RateLimit(f"{self.name}\0{limit.key}", limit.rate, limit.burst,
                               rates or RateTable()) if limit.rate else None
        if self.limit is not None and cluster is not None:
            # One limit for every instance, in Redis; this one when Redis does not answer.
            self.limit = SharedLimit(self.limit, self.name, cluster)
        self.limit_key = limit.key          # client_ip | header:NAME | route

    def __repr__(self) -> str:
        return f"<Pool {self.name} {len(self.balancer.backends)} backend(s)>"

    @property
    def backends(self) -> list[Backend]:
        return self.balancer.backends

    def rewrite(self, target: str) -> str:
        """The target the backend sees: with ``strip_prefix``, without the route's prefix
        ("/" at least, the query kept); otherwise as the client sent it."""
        if not self.settings.strip_prefix or not self.settings.path or target == "*":
            return target
        rest = target[len(self.settings.path):]
        return rest if rest.startswith("/") else "/" + rest


class RouteTable:
    """The routes of one config in precedence order, and the lookup of a request's pool."""

    def __init__(self, routes: Iterable[Pool], default: Pool | None = None):
        self.default = default
        hosts: dict[str, list[Pool]] = {}              # "" = any host
        for pool in routes:
            for host in pool.settings.hosts or ("",):
                hosts.setdefault(host, []).append(pool)
        self._groups = {host: _Paths(pools) for host, pools in hosts.items()}
        self._exact = {host: paths for host, paths in self._groups.items()
                       if host and not host.startswith("*.")}
        self._wildcards = {host[1:]: paths for host, paths in self._groups.items()
                           if host.startswith("*.")}       # ".example.com" -> its paths
        self._any = self._groups.get("")
        # Suffix lengths that have a wildcard, longest first: a host is cut only there.
        self._suffixes = sorted({len(suffix) for suffix in self._wildcards}, reverse=True)
        self.empty = not self._groups

    def match(self, host: str, path: str) -> Pool | None:
        """The pool for a request to ``host`` (lowercased, no port) and ``path`` (raw,
        without the query); None when no route matches and there is no default pool."""
        paths = self._exact.get(host)
        if paths is not None:
            pool = paths.match(path)
            if pool is not None:
                return pool
        for length in self._suffixes:
            if len(host) > length:
                paths = self._wildcards.get(host[-length:])
                if paths is not None:
                    pool = paths.match(path)
                    if pool is not None:
                        return pool
        if self._any is not None:
            pool = self._any.match(path)
            if pool is not None:
                return pool
        return self.default

    def ordered(self) -> list[tuple[str, Pool]]:
        """(host rule, pool) in precedence order, as ``--check`` and ``/status`` show them."""
        rows = [(host, pool) for host in sorted(self._exact) for pool in self._groups[host].ordered]
        for suffix in sorted(self._wildcards, key=lambda s: (-len(s), s)):
            rows += [("*" + suffix, pool) for pool in self._wildcards[suffix].ordered]
        if self._any is not None:
            rows += [("*", pool) for pool in self._any.ordered]
        if self.default is not None:
            rows.append(("*", self.default))
        return rows


class _Paths:
    """The path prefixes of one host rule, indexed by their first segment, so that a path
    is compared with the prefixes that can match it only (longest first), however many."""

    def __init__(self, pools: list[Pool]):
        self.ordered = sorted(pools, key=lambda pool: -len(pool.settings.path))
        self._by_segment: dict[str, list[tuple[str, int, Pool]]] = {}
        self._every_path: Pool | None = None           # the pool without a path, if any
        for pool in self.ordered:
            prefix = pool.settings.path
            if not prefix:
                self._every_path = pool
                continue
            self._by_segment.setdefault(_first_segment(prefix), []).append(
                (prefix, len(prefix), pool))

    def match(self, path: str) -> Pool | None:
        if self._by_segment:
            candidates = self._by_segment.get(_first_segment(path))
            if candidates is not None:
                for prefix, length, pool in candidates:
                    # A whole-segment match: "/api" takes "/api" and "/api/x", not "/apix".
                    if path.startswith(prefix) and (len(path) == length or path[length] == "/"):
                        return pool
        return self._every_path


def _first_segment(path: str) -> str:
    """``/api`` of ``/api/v2/x``; the whole of a path with one segment (or ``*``)."""
    cut = path.find("/", 1)
    return path if cut < 0 else path[:cut]


def request_host(host: str) -> str:
    """A Host value (or an absolute-form authority) as routes match it: lowercased, no
    port, no trailing dot (``example.com.`` is ``example.com``, as in DNS)."""
    host = host.lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] or host
    name, colon, _ = host.rpartition(":")
    return (name if colon else host).rstrip(".")


@dataclass(frozen=True)
class Runtime:
    """The config in force and everything built from it; a reload swaps the whole."""

    config: Config
    table: RouteTable
    pools: tuple[Pool, ...]        # routes in file order, then the default pool if any

    def pool(self, name: str) -> Pool | None:
        return next((pool for pool in self.pools if pool.name == name), None)

    @property
    def balancers(self) -> dict[str, Balancer]:
        """Each pool's balancer by the pool's name."""
        return {pool.name: pool.balancer for pool in self.pools}

    @property
    def default(self) -> Pool | None:
        return self.table.default


class RuntimeHolder:
    """The one reference to the runtime in force. ``App.reload`` replaces ``runtime``;
    a request reads it once, at its start; background work reads it at each round."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    @property
    def config(self) -> Config:
        return self.runtime.config


def build_runtime(config: Config, upstream, previous: Runtime | None = None,
                  clock: Callable[[], float] = time.time,
                  on_check: Callable | None = None, on_added: Callable | None = None,
                  on_removed: Callable | None = None, slots=None,
                  rates: RateTable | None = None, cluster=None) -> Runtime:
    """The runtime of ``config``. Starts nothing (``start_pools`` does) and does no I/O.

    ``upstream`` sends the health checks; ``on_check(pool, backend, result)`` sees each
    one (metrics); ``on_added(pool, members)`` and ``on_removed(pool, members)`` see the
    members DNS adds and the ones whose last request ended after DNS took them away. With
    ``previous``, a route kept by name keeps its backends' state, its discovery and its
    retry budget (see the module docstring), and its ``Capacity`` with its queue. ``slots``
    is a gunicorn group's shared slot table (``app.server.slots``), else None. ``rates``
    holds every pool's rate-limit keys, this runtime's and the next (default: a table of
    each pool's own). ``cluster`` (``app.lb.cluster.Cluster``, or None) shares each pool's
    rate limit with the other instances.
    """
    pools = []
    for settings in config.pools:
        old = previous.pool(settings.name) if previous is not None else None
        pools.append(_pool(settings, config, upstream, old, clock, on_check, on_added, on_removed,
                           slots, rates, cluster))
    routes = [pool for pool in pools if pool.name != DEFAULT_ROUTE]
    default = next((pool for pool in pools if pool.name == DEFAULT_ROUTE), None)
    return Runtime(config, RouteTable(routes, default), tuple(pools))


def _pool(settings: RouteConfig, config: Config, upstream, old: Pool | None, clock, on_check,
          on_added, on_removed, slots=None, rates=None, cluster=None) -> Pool:
    probed = settings.health_check.enabled
    name = settings.name
    if old is None:
        balancer = Balancer.from_configs(settings.backends, settings.policy, settings.slow_start,
                                         probed=probed, clock=clock)
        discovery = Discovery(
            balancer, lambda: config.resolver,
            on_added=(lambda members: on_added(name, members)) if on_added else None,
            on_removed=(lambda members: on_removed(name, members)) if on_removed else None)
    else:
        balancer = old.balancer.successor(settings.backends, settings.policy, settings.slow_start,
                                          probed=probed)
        if old.settings.health_check.enabled and not probed:
            for backend in balancer.backends:
                backend.assume_healthy()    # no checks now: nothing else would bring it back
        discovery = old.discovery
        discovery.follow(balancer, lambda: config.resolver)
    hook = (lambda backend, result: on_check(name, backend, result)) if on_check else None
    health = HealthChecker(balancer, settings.health_check, upstream, clock=clock, on_result=hook,
                           route=name)
    budget = old.budget if old is not None else RetryBudget(settings.retries.budget)
    if old is not None:
        capacity = old.capacity               # its waiters keep their place
        capacity.follow(balancer, settings.queue)
    else:
        capacity = Capacity(name, balancer, settings.queue, shared=slots)
    return Pool(settings, balancer, health, budget, discovery, capacity, rates, cluster)


def lookup_fresh(runtime: Runtime, config: Config) -> dict:
    """For a reload, before ``build_runtime``: each kept pool's DNS entries that are new or
    changed in ``config``, looked up now (I/O), so that they have members from the first
    request the new runtime serves. ``apply_fresh`` hands the answers to the new pools."""
    prepared = {}
    for settings in config.pools:
        old = runtime.pool(settings.name)
        if old is not None and old.discovery is not None:
            prepared[settings.name] = old.discovery.prepare(settings.backends)
    return prepared


def apply_fresh(runtime: Runtime, prepared: dict) -> None:
    """``lookup_fresh``'s answers, applied to the pools of the new runtime (no I/O); a new
    pool with DNS entries is looked up whole now (bounded by ``resolver.timeout``)."""
    for pool in runtime.pools:
        if pool.name in prepared:
            pool.discovery.apply_prepared(prepared[pool.name])
        elif pool.balancer.templates:
            pool.discovery.resolve_once()


def resolve_at_start(runtime: Runtime) -> None:
    """Each pool's first DNS round, before serving, all pools at once, each bounded by
    ``resolver.timeout``. Raises ``StartupError`` (the first) for a pool with DNS entries
    and no member at all."""
    def first_round(pool: Pool) -> StartupError | None:
        try:
            pool.discovery.resolve_at_start()
        except StartupError as error:       # returned, not raised: no traceback from the hub
            return error
        return None

    jobs = [gevent.spawn(first_round, pool) for pool in runtime.pools if pool.balancer.templates]
    gevent.joinall(jobs)
    for job in jobs:
        if job.value is not None:
            raise job.value


def start_pools(runtime: Runtime, previous: Runtime | None = None, checks: bool = True) -> None:
    """Start each pool's health checks (the first round at once; not with ``checks``
    false: a gunicorn group's leader runs them) and DNS lookups; stop ``previous``'s
    checks and the discovery of its pools that are gone."""
    if previous is not None:
        kept = {id(pool.discovery) for pool in runtime.pools}
        for pool in previous.pools:
            pool.health.stop()
            if id(pool.discovery) not in kept:
                pool.discovery.stop()
    for pool in runtime.pools:
        pool.discovery.start()
        if checks:
            pool.health.start()


def stop_pools(runtime: Runtime) -> None:
    for pool in runtime.pools:
        pool.discovery.stop()
        pool.health.stop()
