"""Backends, their state, and the policy that chooses one for each request.

A ``Backend`` holds everything the proxy knows about one upstream server: its address,
whether it is healthy, what is in flight, and its counters. Its health changes in one
place (``record_check``). ``Balancer.choose`` is the only decision point and does no I/O,
so it can be tested with plain asserts. Imports nothing from the rest of the app.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence
from urllib.parse import urlsplit

from gevent.lock import RLock

from .config import BackendConfig, HealthCheckConfig
from .errors import NoBackendAvailable

HEALTH_HISTORY = 20     # health-check results kept per backend, newest last


@dataclass(frozen=True)
class CheckResult:
    """One health check: when, how long, whether it passed, and why not."""

    time: float
    ok: bool
    latency: float
    status: int | None = None
    error: str = ""


class Backend:
    """One upstream server and its live state."""

    def __init__(self, config: BackendConfig, clock: Callable[[], float] = time.time):
        self.config = config
        self.url = config.url
        parts = urlsplit(config.url)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.netloc = parts.netloc
        self.prefix = parts.path.rstrip("/")   # prepended to every request target
        self._clock = clock
        self.healthy = True                    # backends start healthy so the proxy serves at once
        self.since = clock()
        self.passes = 0                        # consecutive passed checks
        self.failures = 0                      # consecutive failed checks
        self.checks: collections.deque[CheckResult] = collections.deque(maxlen=HEALTH_HISTORY)
        self.last_error = ""
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.current_weight = 0                # smooth weighted round-robin state

    def __repr__(self) -> str:
        return f"<Backend {self.url} {'up' if self.healthy else 'down'}>"

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def available(self) -> bool:
        """May take new requests: healthy and not drained."""
        return self.healthy and self.config.weight > 0

    def record_check(self, result: CheckResult, rules: HealthCheckConfig) -> str | None:
        """Apply one health-check result; return ``"up"`` or ``"down"`` on a transition."""
        self.checks.append(result)
        if result.ok:
            self.passes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.passes = 0
            self.last_error = result.error or f"status {result.status}"
        if self.healthy and self.failures >= rules.fall:
            return self._set_healthy(False)
        if not self.healthy and self.passes >= rules.rise:
            return self._set_healthy(True)
        return None

    def _set_healthy(self, healthy: bool) -> str:
        self.healthy = healthy
        self.since = self._clock()
        self.current_weight = 0
        return "up" if healthy else "down"


class Balancer:
    """Chooses a backend for each request, under a gevent lock.

    ``policy`` is one of the names in ``config.POLICIES``; only the round-robin family is
    decided here without request data, the others read ``key``.
    """

    def __init__(self, backends: Sequence[Backend], policy: str = "round_robin"):
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends = list(backends)
        self.policy = policy
        self._lock = RLock()

    def choose(self, exclude: Iterable[Backend] = ()) -> Backend:
        """The next backend by smooth weighted round-robin, skipping ``exclude``.

        Raises ``NoBackendAvailable`` when no healthy, undrained backend is left.
        """
        with self._lock:
            candidates = [b for b in self.backends if b.available and b not in exclude]
            if not candidates:
                raise NoBackendAvailable(self.describe_unavailable(exclude))
            return _smooth_weighted(candidates)

    def describe_unavailable(self, exclude: Iterable[Backend] = ()) -> str:
        """Why no backend can take a request, for the 503 body and the log."""
        excluded = set(exclude)
        reasons = []
        for backend in self.backends:
            if backend in excluded:
                reasons.append(f"{backend.url} already tried")
            elif not backend.healthy:
                reasons.append(f"{backend.url} down: {backend.last_error or 'failed checks'}")
            elif backend.weight == 0:
                reasons.append(f"{backend.url} drained")
        return "; ".join(reasons)

    def find(self, url: str) -> Backend | None:
        return next((b for b in self.backends if b.url == url), None)


def _smooth_weighted(candidates: list[Backend]) -> Backend:
    """nginx's smooth weighted round-robin: with equal weights, a plain rotation.

    Each candidate gains its weight; the one with the most is chosen and pays back the
    total. Weights 5,1,1 give a a b a c a a rather than a a a a a b c.
    """
    total = 0
    best = None
    for backend in candidates:
        backend.current_weight += backend.weight
        total += backend.weight
        if best is None or backend.current_weight > best.current_weight:
            best = backend
    best.current_weight -= total
    return best
