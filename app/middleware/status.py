"""The status document: what ``/_myproxy/status`` answers and the status page draws.

``Status.document(runtime)`` gathers, per route (in precedence order) and per backend of
its pool, its health state and since when, its recent
health checks, its consecutive passes and failures against ``rise``/``fall``, in-flight
requests, request and error counts, and the recent window of ``recent.Traffic`` (rate,
error rate, latency percentiles, a per-second series); the TLS certificates in force
(names, issuer, not-after, days left) when the listener speaks TLS; and for the balancer, the process,
uptime, config source, policy, and totals. Times are Unix seconds; latencies are
milliseconds. Under a gunicorn group (``app.lb.shared.GroupView``) the counters and
in-flight requests are the whole group's, and each worker is listed. It only reads:
backends own their state, ``Metrics`` owns the traffic, the group view the others' records.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from ..lb.balancer import Backend
from ..config import NO_ROUTE
from .metrics import NO_BACKEND, Metrics


class Status:
    """Builds the status document of one app."""

    def __init__(self, metrics: Metrics, draining: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time,
                 certificates: Callable[[], list[dict]] | None = None, group=None,
                 cluster=None):
        self.cluster = cluster    # app.lb.cluster.Cluster with `cluster.redis`, or None
        self.certificates = certificates    # the TLS certificates in force, described
        self.group = group        # app.lb.shared.GroupView under a gunicorn group, or None
        self.metrics = metrics
        self.draining = draining
        self._clock = clock
        self.started = clock()

    def document(self, runtime) -> dict:
        """The status of ``runtime`` (the request's): its routes, each with its backends."""
        now = self._clock()
        config = runtime.config
        routes, backends = [], []
        for host, pool in runtime.table.ordered():
            if any(route["name"] == pool.name for route in routes):
                continue        # a route of several hosts: listed once, at its first
            members = [self.backend(pool, b, now) for b in pool.backends]
            members += [{**self.backend(pool, b, now), "state": "leaving"}
                        for b in pool.balancer.leaving]
            backends += members
            routes.append(describe_route(pool, members))
        unrouted = self.metrics.traffic(NO_ROUTE, NO_BACKEND).snapshot()
        for pool in runtime.pools:      # 503s of a pool with no backend left
            traffic = self.metrics.seen(pool.name, NO_BACKEND)
            if traffic is None:
                continue
            unrouted_pool = traffic.snapshot()
            for key in ("requests", "errors"):
                unrouted[key] += unrouted_pool[key]
            unrouted["window"]["rate"] += unrouted_pool["window"]["rate"]
        document = {
            "time": round(now, 3),
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "uptime_seconds": round(now - self.started, 1),
            "draining": self.draining(),
            "config": {
                "source": config.source,
                "policy": config.policy,
                "health_check": {
                    "enabled": config.health_check.enabled,
                    "path": config.health_check.path,
                    "interval_seconds": config.health_check.interval,
                    "timeout_seconds": config.health_check.timeout,
                    "rise": config.health_check.rise,
                    "fall": config.health_check.fall,
                },
            },
            "totals": {
                "routes": len(routes),
                "backends": len(backends),
                "up": sum(1 for b in backends if b["state"] == "up"),
                "requests": sum(b["requests"] for b in backends) + unrouted["requests"],
                "errors": sum(b["errors"] for b in backends) + unrouted["errors"],
                "in_flight": sum(b["in_flight"] for b in backends),
                "rate": round(sum(b["window"]["rate"] for b in backends)
                              + unrouted["window"]["rate"], 2),
                "no_backend": unrouted["requests"],
            },
            "routes": routes,
            "backends": backends,
            "discovery": [{"route": pool.name, **entry} for pool in runtime.pools
                          for entry in pool.discovery.describe()],
            "tls": None if self.certificates is None or config.tls is None else {
                "min_version": config.tls.min_version,
                "hsts_seconds": config.tls.hsts,
                "certificates": self.certificates(),
            },
            # The URL without its password (config.redact_url), and whether Redis answers.
            "cluster": None if self.cluster is None else {
                "redis": self.cluster.where, "prefix": self.cluster.prefix,
                "timeout_seconds": self.cluster.timeout, "up": self.cluster.up,
            },
        }
        if self.group is not None:
            self._whole_group(document)
        return document

    def _whole_group(self, document: dict) -> None:
        """Under a gunicorn group: each backend's counters and in-flight requests summed
        over the workers (``window``, ``series`` and latencies stay this worker's), the
        totals and each route's likewise, and one entry per live worker. This worker's own
        share is its live count, the others' what they last published."""
        for row in document["backends"]:
            others = self.group.totals(row["route"], row["url"], others=True)
            for key in ("requests", "errors", "in_flight"):
                row[key] += others[key]
        for route in document["routes"]:
            rows = [row for row in document["backends"] if row["route"] == route["name"]]
            route["requests"] = sum(row["requests"] for row in rows)
            route["in_flight"] = sum(row["in_flight"] for row in rows)
        totals = document["totals"]
        totals["requests"] += self.group.requests(others=True)
        totals["errors"] = sum(row["errors"] for row in document["backends"])
        totals["in_flight"] = sum(row["in_flight"] for row in document["backends"])
        document["workers"] = self.group.workers()

    def backend(self, pool, backend: Backend, now: float) -> dict:
        rules = pool.settings.health_check
        traffic = self.metrics.traffic(pool.name, backend.url).snapshot()
        return {
            "route": pool.name,
            "url": backend.url,
            "address": backend.endpoint.address if backend.endpoint is not None else None,
            "state": state_of(backend),
            "since": round(backend.since, 3),
            "since_seconds": round(now - backend.since, 1),
            "weight": backend.weight,
            "configured_weight": backend.config.weight,
            "admin_state": backend.admin_state,     # ready | drain | maint (the admin API)
            "backup": backend.config.backup,
            "last_error": backend.last_error,
            "ejection_left_seconds": round(backend.ejection_left, 1),
            "request_failures": backend.request_failures,
            "health": {
                "passes": backend.passes,
                "failures": backend.failures,
                "rise": rules.rise,
                "fall": rules.fall,
                "checks": [{
                    "time": round(check.time, 3),
                    "ok": check.ok,
                    "latency_ms": round(check.latency * 1000, 3),
                    "status": check.status,
                    "error": check.error,
                } for check in backend.checks],
            },
            "in_flight": backend.in_flight,
            "max_conns": backend.config.max_conns,       # 0 = no cap
            **traffic,
        }


def describe_route(pool, members: list[dict]) -> dict:
    """One route of the document: its rule, its policy, and its backends' URLs and totals."""
    settings = pool.settings
    return {
        "name": pool.name,
        "hosts": list(settings.hosts),
        "path": settings.path or "/",
        "strip_prefix": settings.strip_prefix,
        "policy": settings.policy,
        "health_check_path": settings.health_check.path if settings.health_check.enabled else None,
        "backends": [member["url"] for member in members],
        "up": sum(1 for member in members if member["state"] == "up"),
        "requests": sum(member["requests"] for member in members),
        "in_flight": sum(member["in_flight"] for member in members),
        # Requests waiting for a backend's slot (max_conns): the group's under gunicorn.
        "queue": {"depth": pool.capacity.depth, "size": settings.queue.size,
                  "timeout_seconds": settings.queue.timeout},
    }


def state_of(backend: Backend) -> str:
    """``up``, ``down`` (failed its checks), ``ejected`` (failed requests), or ``drained``
    (weight 0: no new requests); ``leaving`` (gone from DNS, finishing) is the document's.
    An admin state (drain, maint) is the row's ``admin_state``, apart from this."""
    state = backend.state
    return "drained" if state == "up" and backend.weight == 0 else state
