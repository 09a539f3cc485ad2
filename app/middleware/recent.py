"""Recent traffic per backend: what the status page shows, over a sliding window of seconds.

A ``Traffic`` keeps, for one backend, totals since start (responses by status class,
upstream errors by kind) and one slot per second for the last ``WINDOW`` seconds (attempts,
errors, and a bounded sample of latencies). In the window, an attempt is an answer or a
failed attempt, and an error is a 5xx answer or a failed attempt. From those it reports the request
rate, the error rate, latency percentiles, and a per-second series for a sparkline.

Recording is a few integer operations and a list append, so it can sit on every request.
Each second keeps at most ``SAMPLES_PER_SECOND`` latencies (reservoir sampling); the
percentiles weight each second's samples by its real count, so a busy second counts for
what it was. It knows nothing of HTTP, WSGI or Prometheus.
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable

WINDOW = 60                 # seconds of history kept: percentiles, error rate, series
RATE_WINDOW = 10            # seconds the request rate is averaged over
SAMPLES_PER_SECOND = 200    # latencies kept per second (reservoir sampling above that)
PERCENTILES = (50, 95, 99)


class _Second:
    __slots__ = ("second", "count", "errors", "samples")

    def __init__(self):
        self.second = -1
        self.count = 0
        self.errors = 0
        self.samples: list[float] = []

    def reset(self, second: int) -> None:
        self.second = second
        self.count = 0
        self.errors = 0
        self.samples = []


class Traffic:
    """Totals and a per-second window for one backend."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._slots = [_Second() for _ in range(WINDOW)]
        self.requests = 0
        self.errors = 0
        self.by_class = {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
        self.upstream_errors: dict[str, int] = {}

    def record(self, status: int, seconds: float | None) -> None:
        """One finished request: its status and how long it took (None: not a latency)."""
        self.requests += 1
        failed = status >= 500
        self.by_class[_CLASSES.get(status // 100, "5xx")] += 1
        if failed:
            self.errors += 1
        slot = self._current()
        slot.count += 1
        if failed:
            slot.errors += 1
        if seconds is None:
            return
        samples = slot.samples
        if len(samples) < SAMPLES_PER_SECOND:
            samples.append(seconds)
        else:
            index = int(random.random() * slot.count)   # uniform in [0, count): as randrange, cheaper
            if index < SAMPLES_PER_SECOND:
                samples[index] = seconds

    def upstream_error(self, kind: str, answered: bool = False) -> None:
        """One failed attempt on this backend (a request may have more, with retries).

        In the window it is an attempt and an error, so a backend that fails while
        retries hide it from clients still shows its error rate; ``answered`` says the
        attempt was already counted by ``record`` (the body broke off after the answer).
        """
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1
        slot = self._current()
        if not answered:
            slot.count += 1
        slot.errors += 1

    def _current(self) -> _Second:
        now = int(self._clock())
        slot = self._slots[now % WINDOW]
        if slot.second != now:
            slot.reset(now)
        return slot

    def snapshot(self) -> dict:
        """Totals, the window's rate, error rate and percentiles, and the per-second series."""
        now = int(self._clock())
        seconds = [slot for slot in self._slots if now - WINDOW < slot.second <= now]
        count = sum(slot.count for slot in seconds)
        errors = sum(slot.errors for slot in seconds)
        # The rate leaves out the second in progress, so it does not dip at each tick.
        recent = sum(slot.count for slot in seconds if now - RATE_WINDOW <= slot.second < now)
        weighted = [(value, slot.count / len(slot.samples))
                    for slot in seconds if slot.samples for value in slot.samples]
        by_second = {slot.second: slot for slot in seconds}
        series = []
        for second in range(now - WINDOW + 1, now + 1):
            slot = by_second.get(second)
            series.append({
                "t": second,
                "requests": slot.count if slot else 0,
                "errors": slot.errors if slot else 0,
                "p95_ms": _ms(percentile([(v, 1.0) for v in slot.samples], 95))
                          if slot and slot.samples else None,
            })
        return {
            "requests": self.requests,
            "errors": self.errors,
            "responses": dict(self.by_class),
            "upstream_errors": dict(self.upstream_errors),
            "window": {
                "seconds": WINDOW,
                "requests": count,
                "errors": errors,
                "rate": round(recent / RATE_WINDOW, 2),
                "error_rate": round(errors / count, 4) if count else 0.0,
                "latency_ms": {f"p{p}": _ms(percentile(weighted, p)) for p in PERCENTILES},
            },
            "series": series,
        }


_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def percentile(weighted: list[tuple[float, float]], p: float) -> float | None:
    """The weighted nearest-rank ``p``-th percentile of ``(value, weight)`` pairs; None if empty."""
    if not weighted:
        return None
    ordered = sorted(weighted)
    total = sum(weight for _, weight in ordered)
    rank = max(p / 100 * total, 1e-12)
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= rank - 1e-9:
            return value
    return ordered[-1][0]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isnan(seconds) else round(seconds * 1000, 3)
