"""A pool's capacity: each backend's ``max_conns`` slots, and the queue where a request waits
for one (SPEC §8; HAProxy's ``maxconn``/``maxqueue``/``timeout queue``, nginx's ``max_conns``
and ``queue``).

``Capacity.acquire`` is how a request (each attempt of it, a retry too, and a tunnel) gets a
backend: the balancer chooses among the backends with a free slot (``room``), and the slot
is taken at once (no yield between the choice and the count). When every eligible backend
is at its cap, the request joins the pool's FIFO queue and waits; ``release``, when a
request ends, hands the freed slot straight to the first waiter that may use it (no
polling): the waiter wakes with its backend already counted. A full queue, a wait past
``queue.timeout`` or a drain on SIGTERM raise ``QueueRejected`` (503 with Retry-After). A
waiter whose client leaves gets ``ClientAborted`` from its watch while it waits, and leaves
the queue at once; a slot handed to it in the same turn goes back.

Under a gunicorn group, ``shared`` (``app.server.slots.SlotTable``) makes the cap the
group's: a slot is taken in the shared table only while the group's sum is under
``max_conns``, and a worker that frees one pokes the workers that have waiters for the pool.
Waiters are served in the order they came across the group (``SlotTable`` says whose first
waiter came first). A waiter also looks again every ``RECHECK`` seconds (a backend that came
back up, a cap raised by a reload, a poke lost, a slot left for a waiter that cannot use
it), then regardless of the order: a safety net, not the way slots are handed over.

``RetryBudget`` is the pool's other bound (as Envoy's circuit breakers hold a retry budget
beside their connection and queue limits): retries may be at most a share of recent
requests plus a small floor, so a total outage costs the backends little more than the
requests themselves.

Health checks never come here. ``acquire_bound(backend)`` is a sticky session's: a slot on
the backend its cookie names, or a wait for that one alone; None when it is at its cap with
the queue full (or drained), the reason for a sticky session to be balanced anew. A pool without
``max_conns`` anywhere costs one increment and one decrement per request. Imports only the
balancer's types, the config and the errors; the clock is passed in.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Iterable

from gevent.event import Event

from ..config import QueueConfig
from ..errors import NoBackendAvailable, QueueRejected
from .balancer import Backend, Balancer

RECHECK = 0.5           # seconds: a waiter's safety-net look at the pool (module docstring)
RETRY_AFTER = 1         # seconds, in a queue's 503: a slot frees as soon as a request ends
SHUTDOWN_RETRY_AFTER = 5
TAKE_TRIES = 3          # choices made when another worker takes the slot first


class _Waiter:
    """One request in the queue: what it may be given, and what it was given."""

    __slots__ = ("key", "exclude", "event", "backend", "error", "ticket")

    def __init__(self, key: str | None, exclude: tuple):
        self.key, self.exclude = key, exclude
        self.event = Event()
        self.backend: Backend | None = None
        self.error: Exception | None = None
        self.ticket = 0                  # under a group: when it began to wait (SlotTable)


class Capacity:
    """One pool's slots and queue (module docstring). Kept across reloads (``follow``), so
    queued requests keep waiting when a SIGHUP changes caps and queue settings."""

    def __init__(self, name: str, balancer: Balancer, settings: QueueConfig = QueueConfig(),
                 shared=None, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.shared = shared
        self._clock = clock
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self.closed = False          # draining: nothing waits any more
        self.waited = None           # metrics: called with seconds each queued request waited
        self.rejected = None         # metrics: called with "full" | "timeout" | "shutdown"
        self.follow(balancer, settings)

    def follow(self, balancer: Balancer, settings: QueueConfig) -> None:
        """Take a reloaded pool's balancer and queue settings; waiters keep their place and
        get whatever room the new settings give at once."""
        self.balancer, self.settings = balancer, settings
        self.capped = any(b.config.max_conns for b in balancer.backends) or \
            any(t.max_conns for t in balancer.templates.values())
        self.offer()

    # -- the request's side --

    def acquire(self, key: str | None = None, exclude: Iterable[Backend] = (), watch=None,
                request=None) -> Backend:
        """A backend for one attempt, its slot taken: at once, or after a wait in the queue.

        Raises ``NoBackendAvailable`` (none eligible: it names the route), ``QueueRejected``,
        or the watch's ``ClientAborted``. ``request`` (``app.request.Request``) is told how
        long it queued.
        """
        try:
            if not self.capped:
                backend = self.balancer.choose(key, exclude)
                backend.in_flight += 1
                return backend
            # Behind the group's waiters, if any; else a backend with room, if any.
            if self.shared is None or not self.shared.waiting(self.name):
                for _ in range(TAKE_TRIES):
                    backend = self.balancer.choose(key, exclude, self.room)
                    if backend is None:
                        break
                    if self._take(backend):
                        return backend
        except NoBackendAvailable as error:
            raise NoBackendAvailable(f"route {self.name}: {error.detail}") from None
        return self._wait(key, tuple(exclude), watch, request)

    def acquire_bound(self, backend: Backend, key: str | None = None, watch=None,
                      request=None) -> Backend | None:
        """A slot on ``backend``, the one a sticky cookie names: at once, or after a wait in
        the queue for it alone. None when it cannot be had that way, and the request is
        balanced anew (SPEC §8): at its cap with the queue full, or at its
        cap and out of the balancer's choice (``drain``: no waiter would be handed it).
        Raises as ``acquire`` does for a wait that fails."""
        if not self.capped:
            backend.in_flight += 1
            return backend
        if self._take(backend):
            return backend
        if self.closed or self.queue_full or not backend.available:
            return None
        others = tuple(b for b in self.balancer.backends if b is not backend)
        return self._wait(key, others, watch, request)

    def release(self, backend: Backend) -> None:
        """A request (or tunnel) on ``backend`` is over: its slot goes to the first waiter
        that may use it, here or, under a group, in another worker."""
        backend.in_flight -= 1
        if backend.shared_slots:
            backend.shared_slots -= 1
            elsewhere = self.shared.release(self.name, backend.url)
            if elsewhere is not None:
                self.shared.poke(self.name, elsewhere)   # its waiter came first: its slot
                return
        if self._waiters:
            self.offer()

    def room(self, backend: Backend) -> bool:
        """Whether ``backend`` has a free slot (the group's count under a group)."""
        cap = backend.config.max_conns
        if not cap:
            return True
        if self.shared is None:
            return backend.in_flight < cap
        return self.shared.count(self.name, backend.url) < cap

    @property
    def depth(self) -> int:
        """Requests waiting in this pool's queue (the group's under a group)."""
        if self.shared is not None:
            return self.shared.waiting(self.name)
        return len(self._waiters)

    @property
    def local_depth(self) -> int:
        """Requests waiting in this process (the metric's share: workers add up)."""
        return len(self._waiters)

    @property
    def queue_full(self) -> bool:
        return self.depth >= self.settings.size

    def offer(self, ordered: bool = True) -> None:
        """Hand free slots to waiters, first come first served: each waiter in turn gets a
        backend with room that it may use (not one it already tried). Under a group, only
        when no other worker's waiter came first (``ordered``; the safety net is not)."""
        if ordered and self.shared is not None and self._waiters and \
                not self.shared.first_here(self.name):
            return
        while self._waiters:
            for waiter in list(self._waiters):
                try:
                    backend = self.balancer.choose(waiter.key, waiter.exclude, self.room)
                except NoBackendAvailable as error:     # none eligible any more: 503
                    self._hand(waiter, None, NoBackendAvailable(f"route {self.name}: "
                                                                f"{error.detail}"))
                    break
                if backend is not None and self._take(backend):
                    self._hand(waiter, backend)
                    break
            else:
                return

    def close(self) -> None:
        """Draining: every waiter is answered 503 now, and nothing queues from now on."""
        self.closed = True
        while self._waiters:
            self._hand(self._waiters[0], None, QueueRejected(
                "shutdown", self.name, retry_after=SHUTDOWN_RETRY_AFTER))

    # -- inside --

    def _take(self, backend: Backend) -> bool:
        cap = backend.config.max_conns
        if cap and self.shared is not None:
            if not self.shared.take(self.name, backend.url, cap):
                return False             # another worker took the last one
            backend.shared_slots += 1
        elif cap and backend.in_flight >= cap:
            return False
        backend.in_flight += 1
        return True

    def _hand(self, waiter: _Waiter, backend: Backend | None, error: Exception | None = None):
        self._leave(waiter)
        waiter.backend, waiter.error = backend, error
        waiter.event.set()

    def _leave(self, waiter: _Waiter) -> None:
        first = self._waiters[0] is waiter
        self._waiters.remove(waiter)
        if first and self.shared is not None:     # the group's order: when ours began
            self.shared.since(self.name, self._waiters[0].ticket if self._waiters else 0)

    def _wait(self, key, exclude: tuple, watch, request) -> Backend:
        if self.closed:
            raise self._reject("shutdown", SHUTDOWN_RETRY_AFTER)
        if self.settings.size <= 0 or self.queue_full:
            raise self._reject("full")
        waiter = _Waiter(key, exclude)
        self._waiters.append(waiter)
        if self.shared is not None:
            waiter.ticket = self.shared.ticket()
            if len(self._waiters) == 1:
                self.shared.since(self.name, waiter.ticket)
            self.shared.wait(self.name, 1)
            self.offer()         # a slot left free for the group's first waiter may be ours
        started = self._clock()
        deadline = started + self.settings.timeout
        try:
            if watch is not None:
                watch.waiting()          # a client that leaves is thrown out of the wait
            while not waiter.event.is_set():
                left = deadline - self._clock()
                if left <= 0:
                    break
                if not waiter.event.wait(min(left, RECHECK)) and waiter in self._waiters:
                    self.offer(ordered=False)    # the safety net (module docstring)
        except BaseException:
            if waiter.backend is not None:
                self.release(waiter.backend)     # handed over as it left: not taken
            raise
        finally:
            if watch is not None:
                watch.done_waiting()
            if waiter in self._waiters:
                self._leave(waiter)
            if self.shared is not None:
                self.shared.wait(self.name, -1)
            waited = self._clock() - started
            if request is not None:
                request.queued = (request.queued or 0.0) + waited
            if self.waited is not None:
                self.waited(waited)
        if waiter.backend is not None:
            return waiter.backend
        if waiter.error is not None:
            if isinstance(waiter.error, QueueRejected) and self.rejected is not None:
                self.rejected(waiter.error.reason_code)
            raise waiter.error
        raise self._reject("timeout")

    def _reject(self, reason: str, retry_after: int = RETRY_AFTER) -> QueueRejected:
        if self.rejected is not None:
            self.rejected(reason)
        return QueueRejected(reason, self.name, retry_after)


BUDGET_WINDOW = 10.0        # seconds of recent requests the budget counts
BUDGET_FLOOR = 10           # retries always allowed per window, however few the requests


class RetryBudget:
    """Retries in the last ``window`` seconds may be at most ``share`` of the requests in
    it, plus ``floor``. Counted in one-second buckets; ``clock`` is for tests."""

    def __init__(self, share: float, window: float = BUDGET_WINDOW, floor: int = BUDGET_FLOOR,
                 clock: Callable[[], float] = time.monotonic):
        self.share = share
        self.window = window
        self.floor = floor
        self._clock = clock
        self._buckets: collections.deque[list] = collections.deque()  # [second, requests, retries]
        # The (requests, retries) of the other workers of a gunicorn group in the window,
        # set by app.lb.shared: the budget then holds for the whole group.
        self.elsewhere: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def record_request(self) -> None:
        """Count one client request."""
        self._bucket()[1] += 1

    def try_spend(self, share: float | None = None) -> bool:
        """Take one retry from the budget; False when it is spent. ``share`` is the one in
        force, when a reload changed it since the budget was made."""
        if share is not None:
            self.share = share
        bucket = self._bucket()
        other_requests, other_retries = self.elsewhere()
        requests = other_requests + sum(b[1] for b in self._buckets)
        retries = other_retries + sum(b[2] for b in self._buckets)
        if retries >= self.floor + self.share * requests:
            return False
        bucket[2] += 1
        return True

    def buckets(self) -> list[list]:
        """This process's buckets still in the window, ``[second, requests, retries]``."""
        self._bucket()
        return [list(bucket) for bucket in self._buckets]

    def _bucket(self) -> list:
        now = self._clock()
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            return buckets[-1]          # the same second: nothing has aged out since
        while buckets and buckets[0][0] <= now - self.window:
            buckets.popleft()
        buckets.append([second, 0, 0])
        return buckets[-1]
