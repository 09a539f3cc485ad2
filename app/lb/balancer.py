"""Backends, their state, and the choice of one for each request.

A ``Backend`` holds everything the proxy knows about one upstream server: its address,
whether it is up, down (active checks) or ejected (failed requests), what is in flight,
and its counters. Its availability changes in one place (``Backend._set_state``), fed by
``record_check`` (active health) and ``record_request`` (passive health); both return the
transition, if any, for the caller to log. ``Balancer.choose`` decides who may take a
request (healthy, not ejected, not drained, not already tried; backups only when no other
is left), weighs them for slow start, and lets the policy (``policies``) pick. It does no
I/O, and the clock is passed in, so all of it is tested with plain asserts. Imports
nothing from the rest of the app but config values and errors.

Membership is dynamic in one place, ``Balancer.update_members``: a backend entry found
through DNS (``BackendConfig.discovered``, resolved by ``discovery``) is a template, and
each ``Endpoint`` its lookup gave is a member ``Backend`` of its own. Members that stay
keep their object; a member that goes takes no new requests (``Balancer.leaving``) and is
dropped by ``sweep`` once its in-flight requests are done.
"""
from __future__ import annotations

import collections
import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence
from urllib.parse import urlsplit

from gevent.lock import BoundedSemaphore

from ..config import BackendConfig, HealthCheckConfig, PassiveHealthConfig
from ..errors import NoBackendAvailable
from .policies import make_policy

HEALTH_HISTORY = 20     # health-check results kept per backend, newest last
SLOW_START_FLOOR = 0.05  # a recovering backend gets at least this share of its weight
# Admin states (SPEC §9, HAProxy's words): ready takes new requests; drain takes only the
# requests bound to it (a sticky cookie); maint takes none. In-flight requests finish.
ADMIN_STATES = ("ready", "drain", "maint")


@dataclass(frozen=True)
class Endpoint:
    """One address a DNS name stands for: where to connect, and the name it was found under
    (the ``Host`` when ``preserve_host`` is off, and the TLS name for ``https``)."""

    address: str          # an IP address
    port: int
    host: str             # the URL's host (A/AAAA) or the SRV record's target
    weight: int = 1
    backup: bool = False  # an SRV record of a lower priority than the best (RFC 2782)

    @property
    def key(self) -> tuple[str, int]:
        return self.address, self.port


@dataclass(frozen=True)
class CheckResult:
    """One health check: when, how long, whether it passed, and why not."""

    time: float
    ok: bool
    latency: float
    status: int | None = None
    error: str = ""


class Backend:
    """One upstream server and its live state.

    ``probed`` says whether active checks run: then an ejected backend comes back only
    on a passing check once ``eject_for`` is over; without them it gets trial requests
    once ``eject_for`` is over, and the first success brings it back.
    """

    def __init__(self, config: BackendConfig, clock: Callable[[], float] = time.time,
                 probed: bool = True, endpoint: Endpoint | None = None):
        self.config = config
        self.url = config.url
        parts = urlsplit(config.url)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.netloc = parts.netloc
        self.prefix = "" if config.srv else parts.path.rstrip("/")   # prepended to every target
        self.endpoint = endpoint
        self.server_name: str | None = None    # the TLS name when it is not the origin's host
        if endpoint is not None:               # a member found through DNS: see Endpoint
            literal = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
            # Its name: the entry's plus the address (and the port, which SRV records give).
            self.url = f"{config.url} ({literal}:{endpoint.port})" if config.srv \
                else f"{config.url} ({endpoint.address})"
            self.host, self.port = endpoint.address, endpoint.port
            self.origin = f"{parts.scheme}://{literal}:{endpoint.port}"
            if config.srv:
                self.netloc = f"{endpoint.host}:{endpoint.port}"
            self.server_name = endpoint.host if parts.scheme == "https" else None
        self._clock = clock
        self.probed = probed
        self.healthy = True                    # backends start healthy so the proxy serves at once
        self.ejected_until: float | None = None  # set while ejected by failed requests
        self.since = clock()
        self.recovered_at: float | None = None   # when it last came back up (slow start)
        self.passes = 0                        # consecutive passed checks
        self.failures = 0                      # consecutive failed checks
        self.request_failures = 0              # consecutive failed requests (passive health)
        self.checks: collections.deque[CheckResult] = collections.deque(maxlen=HEALTH_HISTORY)
        self.last_error = ""
        self.in_flight = 0                     # this process's requests and tunnels on it
        self.shared_slots = 0                  # of those, the ones counted in a group's table
        self.requests = 0
        self.errors = 0
        self.admin_state = "ready"             # ready | drain | maint (SPEC §9), set at run time
        self.admin_weight: int | None = None   # a weight set at run time, over the configured one
        self.readied_at: float | None = None   # when it last went back to ready (slow start)

    def __repr__(self) -> str:
        return f"<Backend {self.url} {self.state}>"

    @property
    def weight(self) -> int:
        """The weight in force: one set at run time, else the configured one."""
        return self.config.weight if self.admin_weight is None else self.admin_weight

    @property
    def state(self) -> str:
        """``up``, ``down`` (failed active checks) or ``ejected`` (failed requests)."""
        if not self.healthy:
            return "down"
        return "up" if self.ejected_until is None else "ejected"

    @property
    def available(self) -> bool:
        """May take new requests: up, ``ready``, weighted (or an unprobed one on trial)."""
        if self.admin_state != "ready" or not self.healthy:
            return False
        # ``weight`` and ``serving`` inlined: this runs for every backend of every request.
        if (self.config.weight if self.admin_weight is None else self.admin_weight) <= 0:
            return False
        return self.ejected_until is None or self._on_trial()

    @property
    def serving(self) -> bool:
        """Up (or an unprobed one on trial), whatever its admin state and weight: what a
        request bound to it (a sticky cookie) needs, unless it is in ``maint``."""
        if not self.healthy:
            return False
        return self.ejected_until is None or self._on_trial()

    @property
    def ejection_left(self) -> float:
        """Seconds until an ejection's ``eject_for`` is over; 0 when there is none left."""
        return 0.0 if self.ejected_until is None else max(0.0, self.ejected_until - self._clock())

    def record_check(self, result: CheckResult, rules: HealthCheckConfig) -> str | None:
        """Apply one health-check result; return the new state on a transition."""
        self.checks.append(result)
        if result.ok:
            self.passes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.passes = 0
            self.last_error = result.error or f"status {result.status}"
        healthy = self.healthy
        if healthy and self.failures >= rules.fall:
            healthy = False
        elif not healthy and self.passes >= rules.rise:
            healthy = True
        ejected_until = self.ejected_until
        if result.ok and ejected_until is not None and self._clock() >= ejected_until:
            ejected_until = None
        return self._set_state(healthy, ejected_until)

    def record_request(self, failure: str | None, rules: PassiveHealthConfig,
                       may_eject: bool = True) -> str | None:
        """Apply one proxied request's outcome: ``failure`` says why it failed (a connect
        error, reset or timeout; never a status the application chose), None if the
        backend answered. Returns the new state on a transition."""
        if failure is None:
            self.request_failures = 0
            if self.ejected_until is not None and self._clock() >= self.ejected_until:
                return self._set_state(self.healthy, None)
            return None
        self.errors += 1
        self.request_failures += 1
        self.last_error = failure
        if rules.failures == 0 or not may_eject or not self.healthy:
            return None
        if self._on_trial() or (self.ejected_until is None
                                and self.request_failures >= rules.failures):
            # A backend on trial is ejected again by its first failure.
            return self._set_state(self.healthy, self._clock() + rules.eject_for) or "ejected"
        return None

    def assume_healthy(self) -> str | None:
        """Count the backend healthy again, as at start (active checks were switched off)."""
        return self._set_state(True, self.ejected_until)

    def follow(self, healthy: bool, ejected_until: float | None, since: float,
               recovered_at: float | None) -> str | None:
        """Take the state another worker of the group decided (``app.lb.shared``), with
        its times, so that slow start ramps alike everywhere; return the transition."""
        transition = self._set_state(healthy, ejected_until)
        self.since, self.recovered_at = since, recovered_at
        return transition

    def set_admin(self, state: str, weight: int | None, since: float) -> bool:
        """The one place the admin state and run-time weight change (``app.lb.overrides``
        calls it). ``since``: when the state took its value; back in ``ready`` after a
        change, the backend ramps up from then under slow start, as after a recovery.
        Returns whether anything changed."""
        readied_at = since if state == "ready" and since else None
        changed = (state, weight) != (self.admin_state, self.admin_weight)
        self.admin_state, self.admin_weight, self.readied_at = state, weight, readied_at
        return changed

    def _on_trial(self) -> bool:
        return (not self.probed and self.ejected_until is not None
                and self._clock() >= self.ejected_until)

    def _set_state(self, healthy: bool, ejected_until: float | None) -> str | None:
        """The one place availability changes. Returns the new state if it changed."""
        before = self.state
        self.healthy, self.ejected_until = healthy, ejected_until
        after = self.state
        if after == before:
            return None
        self.since = self._clock()
        self.request_failures = 0
        if after == "up":
            self.recovered_at = self.since
        return after


def member_config(template: BackendConfig, endpoint: Endpoint) -> BackendConfig:
    """A member's settings: its template's, with the SRV record's weight (an A/AAAA member
    has the entry's own) and backup when either the entry or the record's priority says so."""
    return dataclasses.replace(template, weight=endpoint.weight if template.srv else template.weight,
                               backup=template.backup or endpoint.backup)


class Balancer:
    """Chooses a backend for each request, under a gevent lock.

    ``policy`` is one of the names in ``config.POLICIES``; ``slow_start`` (seconds) ramps
    a recovered backend's weight up linearly; ``clock`` and ``rng`` are for tests.
    """

    def __init__(self, backends: Sequence[Backend], policy: str = "round_robin",
                 slow_start: float = 0.0, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, templates: Sequence[BackendConfig] = ()):
        self.backends = list(backends)   # empty only while DNS has found no member yet
        self.leaving: list[Backend] = []   # gone from DNS, finishing their in-flight requests
        # The entries whose members DNS gives (``update_members``), by url.
        self.templates: dict[str, BackendConfig] = {t.url: t for t in templates}
        self.probed = all(b.probed for b in backends)   # members get active checks
        self.policy = policy
        self.slow_start = slow_start
        self._rng = rng
        self._policy = make_policy(policy, rng)
        self._clock = clock          # also for backends added by a reload
        self._lock = BoundedSemaphore(1)   # gevent's lock; never taken twice by one greenlet

    @classmethod
    def from_configs(cls, configs: Sequence[BackendConfig], policy: str = "round_robin",
                     slow_start: float = 0.0, probed: bool = True,
                     clock: Callable[[], float] = time.time, **kwargs) -> "Balancer":
        """A balancer for a pool's backend entries: one ``Backend`` per URL, and the
        entries found through DNS as templates, without members until their first answer."""
        backends = [Backend(c, clock, probed) for c in configs if not c.discovered]
        balancer = cls(backends, policy, slow_start, clock,
                       templates=[c for c in configs if c.discovered], **kwargs)
        balancer.probed = probed
        return balancer

    def successor(self, configs: Sequence[BackendConfig], policy: str, slow_start: float = 0.0,
                  probed: bool = True) -> "Balancer":
        """A new balancer for a reloaded pool, this one left as it is for the requests that
        hold it: the backends and DNS members that stay keep their objects (``reload``'s
        rules), the members leaving go on leaving."""
        successor = Balancer(self.backends, self.policy, self.slow_start, self._clock, self._rng,
                             templates=list(self.templates.values()))
        successor.leaving = list(self.leaving)
        successor.reload(configs, policy, slow_start, probed=probed)
        return successor

    def choose(self, key: str | None = None, exclude: Iterable[Backend] = (),
               room: Callable[[Backend], bool] | None = None) -> Backend | None:
        """The backend for the next request, skipping ``exclude`` (those already tried).

        ``key`` is the request's hash key for ``policy: hash``. Raises
        ``NoBackendAvailable`` when no backend can take it. ``room`` (a pool with
        ``max_conns``: ``app.lb.capacity``) says whether a backend has a free slot: those
        without are skipped by every policy, and when that leaves none, the answer is None
        (the request may wait for a slot).
        """
        with self._lock:
            candidates = self.candidates(exclude)
            if not candidates:
                raise NoBackendAvailable(self.describe_unavailable(exclude))
            if room is not None:
                candidates = [b for b in candidates if room(b)]
                if not candidates:
                    return None
            if self.slow_start > 0:
                now = self._clock()
                weights = [self.weight_of(b, now) for b in candidates]
            else:
                weights = [float(b.config.weight if b.admin_weight is None else b.admin_weight)
                           for b in candidates]       # ``weight``, inlined (every request)
            return self._policy.pick(candidates, weights, key)

    def candidates(self, exclude: Iterable[Backend] = ()) -> list[Backend]:
        """Who may take a request: available primaries, else available backups."""
        if exclude:
            excluded = set(exclude)
            usable = [b for b in self.backends if b.available and b not in excluded]
        else:
            usable = [b for b in self.backends if b.available]
        return [b for b in usable if not b.config.backup] or usable

    def takes_sticky(self, backend: Backend) -> bool:
        """Whether a request bound to ``backend`` by a sticky cookie may go to it: it is up
        (or on trial) and not in ``maint``; ``drain`` and weight 0 keep their sticky users.
        The one place this is decided; a slot on it (``max_conns``) is the pool's
        ``Capacity.acquire_bound``'s, which balances anew one at its cap with the queue full."""
        return backend.admin_state != "maint" and backend.serving

    def weight_of(self, backend: Backend, now: float) -> float:
        """The weight in force, ramped up linearly for ``slow_start`` after a recovery or a
        return to ``ready`` (whichever was last)."""
        start = max(backend.recovered_at or 0.0, backend.readied_at or 0.0)
        if self.slow_start > 0 and start:
            ramp = (now - start) / self.slow_start
            if ramp < 1:
                return backend.weight * max(ramp, SLOW_START_FLOOR)
        return float(backend.weight)

    def record_request(self, backend: Backend, failure: str | None,
                       rules: PassiveHealthConfig) -> str | None:
        """Passive health: ``Backend.record_request``, except that failed requests never
        eject the last backend that could take requests (active checks decide for it)."""
        if failure is None:
            # Nothing in it can yield to another greenlet, and it reads no other backend.
            return backend.record_request(None, rules)
        with self._lock:
            others = any(b.available for b in self.backends if b is not backend)
            return backend.record_request(failure, rules, may_eject=others)

    def describe_unavailable(self, exclude: Iterable[Backend] = ()) -> str:
        """Why no backend can take a request, for the 503 body and the log."""
        excluded = set(exclude)
        reasons = []
        for backend in self.backends:
            if backend in excluded:
                reasons.append(f"{backend.url} already tried")
            elif not backend.healthy:
                reasons.append(f"{backend.url} down: {backend.last_error or 'failed checks'}")
            elif not backend.available and backend.ejected_until is not None:
                reasons.append(f"{backend.url} ejected after failed requests: {backend.last_error}")
            elif backend.admin_state != "ready":
                reasons.append(f"{backend.url} in {backend.admin_state} (admin)")
            elif backend.weight == 0:
                reasons.append(f"{backend.url} drained")
        for url in self.templates:
            if not any(b.endpoint is not None and b.config.url == url for b in self.backends):
                reasons.append(f"{url}: no address from DNS yet")
        return "; ".join(reasons)

    def find(self, url: str) -> Backend | None:
        return next((b for b in self.backends if b.url == url), None)

    def members(self, template: str) -> list[Backend]:
        """The members found through DNS for the entry whose url is ``template``."""
        return [b for b in self.backends if b.endpoint is not None and b.config.url == template]

    def update_members(self, template: BackendConfig, endpoints: Sequence[Endpoint]
                       ) -> tuple[list[Backend], list[Backend]]:
        """Make ``endpoints`` the members of ``template``; return (added, gone).

        The one place DNS changes the pool. A member whose address and port stay keeps
        its object (health, counters, in-flight count, slow-start ramp) with the weight
        and backup flag its record now gives; a new one starts healthy, ramping up from
        now under slow start; one that went takes no new requests and waits in
        ``leaving`` for its in-flight requests (``sweep``). One that comes back while
        still leaving is taken back as it was. Ignored for a template no longer
        configured (a reload took it away while its lookup ran).
        """
        with self._lock:
            if self.templates.get(template.url) != template:
                return [], []
            current = {b.endpoint.key: b for b in self.backends
                       if b.endpoint is not None and b.config.url == template.url}
            leaving = {b.endpoint.key: b for b in self.leaving if b.config.url == template.url}
            added, kept = [], {}
            for endpoint in endpoints:
                if endpoint.key in kept:
                    continue                    # the same address twice (A and SRV overlap)
                config = member_config(template, endpoint)
                backend = current.pop(endpoint.key, None) or leaving.pop(endpoint.key, None)
                if backend is None:
                    backend = Backend(config, self._clock, self.probed, endpoint)
                    backend.recovered_at = backend.since if self.slow_start > 0 else None
                    added.append(backend)
                backend.config, backend.endpoint = config, endpoint
                kept[endpoint.key] = backend
            gone = list(current.values())
            position = {id(b): i for i, b in enumerate(self.backends)}
            others = [b for b in self.backends
                      if b.endpoint is None or b.config.url != template.url]
            members = sorted(kept.values(), key=lambda b: position.get(id(b), len(position)))
            self.backends = others + members
            self.leaving = [b for b in self.leaving if b.config.url != template.url
                            or b.endpoint.key not in kept] + gone
            self._policy = make_policy(self.policy, self._rng)
            return added, gone

    def sweep(self) -> list[Backend]:
        """Drop the leaving members with nothing in flight; return them."""
        with self._lock:
            done = [b for b in self.leaving if b.in_flight <= 0]
            self.leaving = [b for b in self.leaving if b.in_flight > 0]
            return done

    def reload(self, configs: Sequence[BackendConfig], policy: str, slow_start: float = 0.0,
               probed: bool = True) -> list[Backend]:
        """Swap in a new backend list and policy at once, under the lock; return the removed.

        A backend whose URL stays keeps its object (health state, counters, in-flight
        count) with the new weight and backup flag; a new URL gets a new, healthy
        backend. Requests already sent to a removed backend keep their reference and
        finish. The policy starts afresh, so new weights hold from the next request.
        """
        with self._lock:
            current = {backend.url: backend for backend in self.backends}
            backends = []
            for config in configs:
                if config.discovered:
                    # Its members stay as DNS last gave them, with the entry's new settings.
                    for member in self._members_of(config, current):
                        member.config = member_config(config, member.endpoint)
                        backends.append(member)
                    continue
                backend = current.pop(config.url, None) or Backend(config, self._clock, probed)
                backend.config, backend.probed = config, probed
                backends.append(backend)
            self.templates = {c.url: c for c in configs if c.discovered}
            gone = [b for b in current.values() if b.endpoint is not None]
            self.leaving += gone
            for backend in backends:
                backend.probed = probed
            self.backends, self.probed = backends, probed
            self.policy, self.slow_start = policy, slow_start
            self._policy = make_policy(policy, self._rng)
            return [b for b in current.values() if b.endpoint is None]

    @staticmethod
    def _members_of(template: BackendConfig, current: dict) -> list[Backend]:
        """Pop ``template``'s members from ``current`` (url -> backend), in order."""
        members = [b for b in current.values()
                   if b.endpoint is not None and b.config.url == template.url]
        for backend in members:
            del current[backend.url]
        return members
