"""Active health checks: a greenlet that probes every backend each interval.

``check_once`` runs one round (every backend at once, each with the check timeout) and is
what tests call; ``start`` runs rounds in a loop until ``stop``; ``wake`` runs the next round
at once. Each pool has its own checker with its own rules (``app.lb.routes``): a reload
makes new pools, so the rules of a checker never change. A
backend's state changes only through ``Backend.record_check``; this module logs the
transitions it reports. It knows nothing of WSGI or of how requests are proxied.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable

import gevent
from gevent.event import Event

from .balancer import Backend, Balancer, CheckResult
from ..config import DEFAULT_ROUTE, HealthCheckConfig, TimeoutsConfig, format_value
from ..errors import UpstreamError
from ..logs import Fields

log = logging.getLogger("myproxy.health")

JITTER = 0.1   # each round starts up to 10% of the interval early or late


class HealthChecker:
    """Probes ``GET health_check.path`` on each backend of a balancer, through ``upstream``
    (the proxy's ``Upstream``, handed in: this package never imports the proxy)."""

    def __init__(self, balancer: Balancer, rules: HealthCheckConfig, upstream,
                 clock: Callable[[], float] = time.time, on_result: Callable | None = None,
                 route: str | None = None):
        self.balancer = balancer
        self.rules = rules
        self.route = route              # the pool's route, named in the log lines
        self.upstream = upstream
        self._clock = clock
        self._on_result = on_result     # called with (backend, result): metrics hook
        self._greenlet: gevent.Greenlet | None = None
        self._wake = Event()
        self.rounds = 0

    def check_once(self) -> None:
        """Check every backend once, concurrently, and apply the results."""
        backends = list(self.balancer.backends)
        rules = self.rules
        jobs = [gevent.spawn(self.probe, backend) for backend in backends]
        gevent.joinall(jobs, timeout=rules.timeout + 1)
        results = []
        for backend, job in zip(backends, jobs):
            if job.successful():
                result = job.value
            else:
                job.kill(block=False)
                result = CheckResult(self._clock(), False, rules.timeout,
                                     error=f"check did not finish: {job.exception or 'timeout'}")
            self.apply(backend, result)
            results.append(result)
        if self.rounds == 0:
            self._warn_of_the_path(results)
        self.rounds += 1

    def _warn_of_the_path(self, results: list[CheckResult]) -> None:
        """After the first round: when every backend failed with one and the same 4xx, the
        path is likely wrong (APIs often answer 404 on ``/``), and within ``fall`` rounds
        every backend is down. One warning naming the path and the key to change."""
        statuses = {result.status for result in results if not result.ok}
        if not results or any(r.ok for r in results) or len(statuses) != 1:
            return
        status = statuses.pop()
        if status is None or not 400 <= status <= 499:
            return
        key = "health_check.path" + (f" of route {self.route}"
                                     if self.route not in (None, DEFAULT_ROUTE) else "")
        log.warning(Fields(
            f"every backend failed its first health check with status {status}: GET "
            f"{self.rules.path} is likely the wrong path, and every backend will be down after "
            f"{self.rules.fall} failed checks; set {key} to a path the backends answer with "
            f"{format_value('health_check.expect', self.rules.expect)} (try it with "
            "`python wsgi.py --check --probe`)", route=self.route, path=self.rules.path,
            status=status, backends=len(results)))

    def probe(self, backend: Backend) -> CheckResult:
        """One ``GET`` of the health path; never raises."""
        started = time.monotonic()
        headers = [("Host", backend.netloc), ("User-Agent", "myproxy-health-check"),
                   ("Connection", "close")]
        timeout = TimeoutsConfig(connect=self.rules.timeout, read=self.rules.timeout)
        try:
            response = self.upstream.send(backend.origin, "GET", backend.prefix + self.rules.path,
                                          headers, timeout=timeout, keep_alive=False)
        except UpstreamError as error:
            return CheckResult(self._clock(), False, time.monotonic() - started, error=error.detail)
        try:
            response.drain_conn()
        finally:
            response.release_conn()
        ok = self.rules.passes(response.status)
        return CheckResult(self._clock(), ok, time.monotonic() - started, response.status,
                           "" if ok else f"status {response.status}")

    def apply(self, backend: Backend, result: CheckResult) -> None:
        transition = backend.record_check(result, self.rules)
        if self._on_result is not None:
            self._on_result(backend, result)
        if transition == "down":
            log.warning(Fields("backend down", backend=backend.url, route=self.route,
                               cause=backend.last_error, failed_checks=backend.failures))
        elif transition == "up":
            log.info(Fields("backend up", backend=backend.url, route=self.route,
                            passed_checks=backend.passes))
        elif transition == "ejected":       # up by its checks, still serving an ejection
            log.info(Fields("backend passes checks", backend=backend.url, route=self.route,
                            returns_in_s=round(backend.ejection_left, 1)))

    def start(self) -> None:
        """Run rounds in a background greenlet: the first at once, then every interval."""
        if self._greenlet is None and self.rules.enabled:
            self._greenlet = gevent.spawn(self._run)

    def wake(self) -> None:
        """Start the next round now rather than at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the loop; safe to call twice."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=1)

    @property
    def running(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def _run(self) -> None:
        while True:
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - a background loop never dies silently
                log.exception("health-check round failed; retrying next interval")
            self._wake.wait(self.next_delay())
            self._wake.clear()

    def next_delay(self) -> float:
        """Seconds to the next round: the interval, spread by ±JITTER so that many
        proxies do not probe the same backends in step."""
        return self.rules.interval * random.uniform(1 - JITTER, 1 + JITTER)
