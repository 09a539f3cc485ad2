"""The status document: what ``/_myproxy/status`` answers and the status page draws.

``Status.document()`` gathers, per backend, its health state and since when, its recent
health checks, its consecutive passes and failures against ``rise``/``fall``, in-flight
requests, request and error counts, and the recent window of ``recent.Traffic`` (rate,
error rate, latency percentiles, a per-second series); and for the balancer, the process,
uptime, config source, policy, and totals. Times are Unix seconds; latencies are
milliseconds. Under a gunicorn group (``app.lb.shared.GroupView``) the counters and
in-flight requests are the whole group's, and each worker is listed. It only reads:
backends own their state, ``Metrics`` owns the traffic, the group view the others' records.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from ..lb.balancer import Backend, Balancer
from ..lb.shared import DEFAULT_POOL
from ..config import Config, ConfigHolder
from .metrics import NO_BACKEND, Metrics


class Status:
    """Builds the status document of one app."""

    def __init__(self, settings: ConfigHolder, balancer: Balancer, metrics: Metrics,
                 draining: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.time,
                 group=None):
        self.group = group        # app.lb.shared.GroupView under a gunicorn group, or None
        self.settings = settings
        self.balancer = balancer
        self.metrics = metrics
        self.draining = draining
        self._clock = clock
        self.started = clock()

    @property
    def config(self) -> Config:
        return self.settings.config

    def document(self) -> dict:
        now = self._clock()
        backends = [self.backend(b, now) for b in self.balancer.backends]
        unrouted = self.metrics.traffic(NO_BACKEND).snapshot()
        document = self._document(now, backends, unrouted)
        if self.group is not None:
            self._whole_group(document)
        return document

    def _whole_group(self, document: dict) -> None:
        """Under a gunicorn group: each backend's counters and in-flight requests summed
        over the workers (``window``, ``series`` and latencies stay this worker's), the
        totals likewise, and one entry per live worker."""
        workers = self.group.workers()
        for row in document["backends"]:
            row.update(self.group.totals(DEFAULT_POOL, row["url"]))
        totals = document["totals"]
        totals["requests"] = self.group.requests()
        totals["errors"] = sum(row["errors"] for row in document["backends"])
        totals["in_flight"] = sum(row["in_flight"] for row in document["backends"])
        document["workers"] = workers

    def _document(self, now: float, backends: list, unrouted: dict) -> dict:
        return {
            "time": round(now, 3),
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "uptime_seconds": round(now - self.started, 1),
            "draining": self.draining(),
            "config": {
                "source": self.config.source,
                "policy": self.config.policy,
                "health_check": {
                    "enabled": self.config.health_check.enabled,
                    "path": self.config.health_check.path,
                    "interval_seconds": self.config.health_check.interval,
                    "timeout_seconds": self.config.health_check.timeout,
                    "rise": self.config.health_check.rise,
                    "fall": self.config.health_check.fall,
                },
            },
            "totals": {
                "backends": len(backends),
                "up": sum(1 for b in backends if b["state"] == "up"),
                "requests": sum(b["requests"] for b in backends) + unrouted["requests"],
                "errors": sum(b["errors"] for b in backends) + unrouted["errors"],
                "in_flight": sum(b["in_flight"] for b in backends),
                "rate": round(sum(b["window"]["rate"] for b in backends)
                              + unrouted["window"]["rate"], 2),
                "no_backend": unrouted["requests"],
            },
            "backends": backends,
        }

    def backend(self, backend: Backend, now: float) -> dict:
        rules = self.config.health_check
        traffic = self.metrics.traffic(backend.url).snapshot()
        return {
            "url": backend.url,
            "state": state_of(backend),
            "since": round(backend.since, 3),
            "since_seconds": round(now - backend.since, 1),
            "weight": backend.weight,
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
            **traffic,
        }


def state_of(backend: Backend) -> str:
    """``up``, ``down`` (failed its checks), ``ejected`` (failed requests), or ``drained``
    (weight 0: no new requests)."""
    state = backend.state
    return "drained" if state == "up" and backend.weight == 0 else state
