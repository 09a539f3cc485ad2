"""One view of the backends across the workers of a gunicorn group.

With ``WEB_CONCURRENCY=N`` each worker is a process with its own ``Balancer``. This module
makes them act as one, through the records each worker publishes (``GroupView.sync_once``,
every ``SYNC_INTERVAL``; the files, the leader's lock and who is alive are the
``group`` handed in, ``app.server.group.ProcessGroup``):

- **Health checks run in the leader only**, once per interval for the group. Every other
  worker follows the leader's state of each backend (up or down, ejected until when,
  since when: so slow start ramps alike), its consecutive passes and failures, and its
  recent checks. When the leader dies, the next worker to take the lock runs the checks,
  starting from the state it was following.
- **An ejection is news for every worker**: a worker that ejects a backend after failed
  requests publishes when and until when. Every worker (the leader included) applies an
  ejection newer than the leader's last change of that backend's state, so a backend
  taken out by one worker is out in all within two sync intervals; the leader takes it
  in, and when its checks bring the backend back, it comes back in all of them together.
- **The retry budget counts the group's requests and retries** (``RetryBudget.elsewhere``).
- **Admin states** (drain, maint, a run-time weight: ``app.lb.overrides``) are read from
  the group's file at every round, the first included, so a change made through any
  worker holds in all within a round, and a new worker starts with it.
- ``workers()`` and ``totals()`` give ``/status`` the whole group: each live worker's pid,
  requests and requests in flight, and per backend the sum over all workers, dead ones
  included for the counters (what a replaced worker counted is not lost).

Everything is keyed by (pool name, backend URL): ``pools`` returns each route's balancer by
its name (``DEFAULT_POOL`` for the top-level ``backends``) and ``budgets`` each route's
retry budget, from the runtime in force. It imports only ``balancer``'s types; no I/O of
its own.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from .balancer import Backend, Balancer, CheckResult
from .rounds import Rounds

log = logging.getLogger("myproxy.group")

SYNC_INTERVAL = 0.2          # seconds between two publish-and-read rounds of a worker
DEFAULT_POOL = "default"


class GroupView:
    """This worker's side of the group's shared view.

    ``health`` is what runs the worker's health checks (``start``, ``stop``: every pool's
    checker); ``budgets`` returns each pool's ``RetryBudget`` by name (``budget`` alone is
    the default pool's); ``group`` a ``ProcessGroup``; ``counts(pool, backend)`` returns a
    backend's ``(requests, errors)`` as this worker counts them (the status document's
    counters; default: the backend's own); ``unrouted`` this worker's requests that found
    no backend; ``admin`` the group's ``AdminStates`` (over a ``FileStore``), if any.
    """

    def __init__(self, pools: Callable[[], dict[str, Balancer]], group, health=None,
                 budget=None, counts: Callable[[str, Backend], tuple[int, int]] | None = None,
                 unrouted: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.time, budgets: Callable[[], dict] | None = None,
                 admin=None):
        self.pools = pools
        self.group = group
        self.health = health
        self.admin = admin
        if budgets is None:
            budgets = (lambda: {DEFAULT_POOL: budget}) if budget is not None else dict
        self.budgets = budgets
        self.counts = counts or (lambda pool, backend: (backend.requests, backend.errors))
        self.unrouted = unrouted
        self._clock = clock
        self._records: dict[int, dict] = {}
        self._leader: dict | None = None
        self._rounds = Rounds(self.sync_once, SYNC_INTERVAL, "group sync", log)
        self.checks_wanted = False   # the app asked for health checks (start, reload)
        self._hook_budgets()

    @property
    def leading(self) -> bool:
        return self.group.leading

    # -- the health checker's life, in the leader only (HealthGate calls these) --

    def want_checks(self, wanted: bool) -> None:
        self.checks_wanted = wanted
        if self.health is None:
            return
        if wanted and self.leading:
            self.health.start()
        elif not wanted:
            self.health.stop()

    # -- the loop --

    def start(self) -> None:
        """One round at once (a new worker follows the group before it serves), then a
        round every ``SYNC_INTERVAL`` in a greenlet."""
        self._rounds.start()

    def stop(self) -> None:
        """Stop the loop; safe to call twice."""
        self._rounds.stop()

    def sync_once(self) -> None:
        """Lead if the lock is free; read the others' records; apply; publish ours."""
        if not self.leading and self.group.try_lead():
            log.info("worker %d leads the group: it runs the health checks", self.group.pid)
            if self.checks_wanted and self.health is not None:
                self.health.start()
        self._records = self.group.records()
        leaders = [r for r in self._records.values()
                   if r.get("leader") and r["alive"] and r["pid"] != self.group.pid]
        self._leader = max(leaders, key=lambda r: r["time"]) if leaders else None
        pools = self.pools()
        for pool, balancer in pools.items():
            for backend in list(balancer.backends):
                self._apply(pool, backend)
        if self.admin is not None:
            self.admin.apply(pools)
        self._hook_budgets()             # a reload's new routes have budgets of their own
        self.group.publish(self.record())

    def _apply(self, pool: str, backend: Backend) -> None:
        # An ejection of this worker's own since its last round: the leader's state below
        # does not know it yet, and must not undo it.
        own = [[backend.since, backend.ejected_until]] if backend.ejected_until is not None else []
        decided = None if self.leading or self._leader is None else \
            self._leader["pools"].get(pool, {}).get(backend.url, {}).get("health")
        if decided is not None:
            backend.follow(decided["healthy"], decided["ejected_until"], decided["since"],
                           decided["recovered_at"])
            backend.passes, backend.failures = decided["passes"], decided["failures"]
            backend.last_error = decided["last_error"]
            if [c[0] for c in decided["checks"]] != [c.time for c in backend.checks]:
                backend.checks.clear()
                backend.checks.extend(CheckResult(*c) for c in decided["checks"])
        # Ejections newer than the last change of state the leader made (or, in the
        # leader, than its own last change): news it has not taken in yet.
        reported = own + [entry["ejected"] for entry in self._entries(pool, backend.url)
                          if entry.get("ejected")]
        news = [ejection for ejection in reported if ejection[0] > backend.since]
        if news and backend.healthy:
            until = max(until for _, until in news)
            if backend.ejected_until is None:
                backend.follow(True, until, max(at for at, _ in news), backend.recovered_at)
            elif until > backend.ejected_until:
                backend.follow(True, until, backend.since, backend.recovered_at)

    def _entries(self, pool: str, url: str) -> list[dict]:
        """What each worker's record says of one backend (those that have it)."""
        entries = (record["pools"].get(pool, {}).get(url) for record in self._records.values())
        return [entry for entry in entries if entry is not None]

    def reload_others(self) -> None:
        """Have every other live worker reload the config (this one did: the admin API)."""
        others = [pid for pid, record in self._records.items()
                  if record["alive"] and pid != self.group.pid]
        self.group.signal_reload(others)

    # -- what this worker publishes --

    def record(self) -> dict:
        pools = {}
        requests = in_flight = 0
        for pool, balancer in self.pools().items():
            entries = pools[pool] = {}
            for backend in balancer.backends:
                answered, errors = self.counts(pool, backend)
                requests += answered
                in_flight += backend.in_flight
                # An ejection in force here, [since, until]: news for the others only
                # when it is newer than what they follow (see _apply).
                ejected = None if backend.ejected_until is None else \
                    [backend.since, backend.ejected_until]
                entry = {"requests": answered, "errors": errors,
                         "in_flight": backend.in_flight, "ejected": ejected}
                if self.leading:
                    entry["health"] = {
                        "healthy": backend.healthy, "ejected_until": backend.ejected_until,
                        "since": backend.since, "recovered_at": backend.recovered_at,
                        "passes": backend.passes, "failures": backend.failures,
                        "last_error": backend.last_error,
                        "checks": [[c.time, c.ok, c.latency, c.status, c.error]
                                   for c in backend.checks]}
                entries[backend.url] = entry
        return {"pid": self.group.pid, "time": self._clock(), "leader": self.leading,
                "requests": requests + self.unrouted(), "in_flight": in_flight,
                "budget": {pool: budget.buckets() for pool, budget in self.budgets().items()},
                "pools": pools}

    def _hook_budgets(self) -> None:
        for pool, budget in self.budgets().items():
            budget.elsewhere = lambda pool=pool, budget=budget: self._budget_elsewhere(pool, budget)

    def _budget_elsewhere(self, pool: str, budget) -> tuple[int, int]:
        """The other workers' requests and retries of ``pool`` in the budget's window."""
        now = budget._clock()
        requests = retries = 0
        for pid, record in self._records.items():
            if pid == self.group.pid:
                continue
            for second, asked, retried in (record.get("budget") or {}).get(pool, ()):
                if second > now - budget.window:
                    requests += asked
                    retries += retried
        return requests, retries

    # -- what /status shows --

    def workers(self) -> list[dict]:
        """Each live worker: pid, whether it leads, requests served, requests in flight."""
        return sorted(({"pid": r["pid"], "leader": r["leader"], "requests": r["requests"],
                        "in_flight": r["in_flight"]}
                       for r in self._records.values() if r["alive"]), key=lambda w: w["pid"])

    def requests(self, others: bool = False) -> int:
        """Requests served by the group: every worker that ever served, dead ones too
        (with ``others``, but this one: the caller adds its own, fresher, count)."""
        return sum(record["requests"] for pid, record in self._records.items()
                   if not (others and pid == self.group.pid))

    def totals(self, pool: str, url: str, others: bool = False) -> dict:
        """``requests``, ``errors`` (every worker that ever served) and ``in_flight`` (the
        live ones) of one backend across the group (with ``others``, but this worker)."""
        requests = errors = in_flight = 0
        for pid, record in self._records.items():
            if others and pid == self.group.pid:
                continue
            entry = record["pools"].get(pool, {}).get(url)
            if entry is None:
                continue
            requests += entry["requests"]
            errors += entry["errors"]
            if record["alive"]:
                in_flight += entry["in_flight"]
        return {"requests": requests, "errors": errors, "in_flight": in_flight}


class HealthGate:
    """The app's health checker as the app sees it in a group: ``start``, ``stop`` and
    ``wake`` reach the real checker only in the leader. It also runs the view's loop,
    from the app's start to its stop (``app_started`` tells a stop from a reload that
    switched checks off)."""

    def __init__(self, health, view: GroupView):
        self.health = health
        self.view = view
        self.app_started: Callable[[], bool] = lambda: False

    def start(self) -> None:
        self.view.start()
        self.view.want_checks(self.health.rules.enabled)

    def stop(self) -> None:
        self.view.want_checks(False)
        if not self.app_started():
            self.view.stop()

    def wake(self) -> None:
        if self.view.leading:
            self.health.wake()

    def __getattr__(self, name):
        return getattr(self.health, name)      # check_once, probe, running, rounds, rules
