"""Retries: which failed attempts may be sent again, and the budget that caps how many
retries the backends get.

- ``may_retry`` is the rule (STACK-FACTS 10): nothing sent (refused, connect timeout)
  means any method may go again; a reset or read timeout after sending means only an
  idempotent method may, and only with its whole body kept (``proxy.body`` keeps it). A
  ``POST`` that reached a backend is never sent twice.
- ``RetryBudget`` lets retries be at most a share of recent requests plus a small floor,
  so a total outage costs the backends little more than the requests themselves.

It knows nothing of WSGI or of how backends are chosen.
"""
from __future__ import annotations

import collections
import time
from typing import Callable

from ..errors import UpstreamError, UpstreamReset, UpstreamTimeout

# RFC 9110 §9.2.2: methods whose intended effect is the same however often they are sent.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

BUDGET_WINDOW = 10.0        # seconds of recent requests the budget counts
BUDGET_FLOOR = 10           # retries always allowed per window, however few the requests


def may_retry(error: UpstreamError, method: str, replayable: bool) -> bool:
    """Whether an attempt that failed with ``error`` may be sent again; ``replayable``:
    whether the request's whole body can be sent again (``proxy.body.RequestBody``)."""
    if not replayable:
        return False
    if not error.sent:
        return True
    # A stale pooled connection (its bytes were no answer to this request) is sent again
    # on a fresh one, whatever its error looked like.
    return method in IDEMPOTENT_METHODS and (
        isinstance(error, (UpstreamReset, UpstreamTimeout)) or error.stale)


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
