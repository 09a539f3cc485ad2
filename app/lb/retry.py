"""Retries: which failed attempts may be sent again, the request body kept for the
replay, and the budget that caps how many retries the backends get.

- ``may_retry`` is the rule (STACK-FACTS 10): nothing sent (refused, connect timeout)
  means any method may go again; a reset or read timeout after sending means only an
  idempotent method may, and only with its whole body kept. A ``POST`` that reached a
  backend is never sent twice.
- ``ReplayableBody`` keeps a copy of a small body as it streams out, so an attempt can
  be replayed; a body past ``REPLAY_LIMIT`` is streamed and never kept.
- ``RetryBudget`` lets retries be at most a share of recent requests plus a small floor,
  so a total outage costs the backends little more than the requests themselves.

It knows nothing of WSGI or of how backends are chosen.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Iterable, Iterator

from ..errors import UpstreamError, UpstreamReset, UpstreamTimeout

# RFC 9110 §9.2.2: methods whose intended effect is the same however often they are sent.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

REPLAY_LIMIT = 64 * 1024    # request bodies up to this size are kept for a replay
READ_SIZE = 64 * 1024       # bytes read from the client at a time
BUDGET_WINDOW = 10.0        # seconds of recent requests the budget counts
BUDGET_FLOOR = 10           # retries always allowed per window, however few the requests


def may_retry(error: UpstreamError, method: str, body: "ReplayableBody") -> bool:
    """Whether an attempt that failed with ``error`` may be sent again."""
    if not body.replayable:
        return False
    if not error.sent:
        return True
    # A stale pooled connection (its bytes were no answer to this request) is sent again
    # on a fresh one, whatever its error looked like.
    return method in IDEMPOTENT_METHODS and (
        isinstance(error, (UpstreamReset, UpstreamTimeout)) or error.stale)


class ReplayableBody:
    """The client's request body, kept while small so a failed attempt can be replayed.

    ``source`` is a reader (``read(size)``), an iterable of bytes, or None for no body;
    ``chunked`` says how it goes upstream. Each ``attempt()`` gives the body to send: the
    bytes read so far (when kept), then the rest from the client, kept in turn until they
    pass ``limit``. Bytes are read from the client only as an attempt sends them.
    """

    def __init__(self, source=None, chunked: bool = False, limit: int = REPLAY_LIMIT,
                 length: int | None = None):
        self.chunked = chunked
        self.length = length                        # the Content-Length to send, if any
        self.consumed = 0                           # bytes read from the client so far
        self.client_failed = False                  # reading from the client raised
        self._limit = limit
        self._kept: bytearray | None = bytearray()  # None once the body outgrew the limit
        self._pieces: Iterator[bytes] | None = None
        if source is not None:
            self._pieces = iter(_reads(source) if hasattr(source, "read") else source)

    @property
    def replayable(self) -> bool:
        """Whether another attempt can send the whole body again."""
        if self.client_failed:
            return False
        return self._pieces is None or self.consumed == 0 or self._kept is not None

    def attempt(self) -> Iterable[bytes] | None:
        """The body for the next attempt, or None when the request has none."""
        if self._pieces is None:
            return None
        if not self.replayable:
            raise RuntimeError("the request body was sent and not kept; it cannot be replayed")
        return self._stream()

    def _stream(self) -> Iterator[bytes]:
        if self._kept:
            yield bytes(self._kept)
        while True:
            try:
                piece = next(self._pieces)
            except StopIteration:
                return
            except Exception:
                # The client's fault (it went away, or sent a bad chunk): never the backend's.
                self.client_failed = True
                raise
            self.consumed += len(piece)
            if self._kept is not None:
                if len(self._kept) + len(piece) <= self._limit:
                    self._kept += piece
                else:
                    self._kept = None               # too big to keep: stream it only
            yield piece


def _reads(reader) -> Iterator[bytes]:
    while True:
        data = reader.read(READ_SIZE)
        if not data:
            return
        yield data


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
