"""Rate limits: GCRA over one fixed-size table of keys, shared by a gunicorn group.

The algorithm is GCRA (the generic cell rate algorithm, ITU-T I.371; what a token bucket
computes, in one number). A key's whole state is its theoretical arrival time, ``tat``:
when its next request would be right on the steady rate. With ``interval = 1 / rate``
and ``tolerance = burst × interval``, a request at ``now`` is admitted when
``max(tat, now) − now ≤ tolerance``, and then ``tat = max(tat, now) + interval``.
So a key that has been quiet may send ``burst + 1`` requests at once (the one the rate
allows now, and ``burst`` above it), then one every ``interval``: in the ``t`` seconds
from its first request, ``burst + rate × t`` (``rate: 50/s, burst: 10``: 510 in 10 s of
flooding), and never more than ``1 + burst + rate × t`` in any span of ``t``.
A refused request is told how long until it would be admitted (``Retry-After``).

The states live in a ``RateTable``: open addressing on a keyed 64-bit hash of the key,
``SLOTS`` slots of (key hash, tat, last use), each key looked for in a window of
``PROBE`` slots from its home. A key not found takes a free slot of its window: an empty
one, or one whose ``tat`` is past (its state is the same as no state at all), else the
one used longest ago, whose state is lost (it starts afresh). The memory is fixed by
construction, whatever the number of clients: ``SLOTS × 24`` bytes.

Under a gunicorn group the table is a file in ``$MYPROXY_GROUP_DIR`` mapped by every
worker (``MAP_SHARED``), so the group has one limit, not one per worker. A window is
updated under a POSIX record lock (``fcntl.lockf``) on its own bytes, held for a few
reads and one write and never across a yield, so windows far apart do not contend. The
state is in the file, not in a worker: a worker that dies (the kernel releases its
locks) or is replaced changes nothing. Without a group directory the same table is an
anonymous mapping in the process, without locks: one code path.

``RateLimit`` is one pool's limit over the table, behind the one call a request makes,
``check(key, now) -> seconds to wait`` (0: admitted), so that a limit kept elsewhere
(Redis, with this one as its fallback) can stand in front of it. It knows nothing of
HTTP; the key's value is the caller's (``app.lb.affinity.request_key``).
"""
from __future__ import annotations

import math
import mmap
import os
import struct
import time
from fcntl import LOCK_EX, LOCK_UN, lockf
from hashlib import blake2b

SLOTS = 1 << 17              # keys held at most: 131,072 (3 MiB of table)
PROBE = 8                    # slots looked at for one key
TABLE_NAME = "ratelimit.table"
MAGIC = b"MPRL0001"

_HEADER = struct.Struct("<8s16s")        # magic, the hash key
_HEADER_SIZE = 64                         # the first slot's offset
_SLOT = struct.Struct("<Qdd")            # key hash (0 = empty), tat, last use
_WINDOW = struct.Struct("<" + "Qdd" * PROBE)
_SLOT_SIZE = _SLOT.size
_WINDOW_SIZE = _WINDOW.size
_LAST, _LAST_OFFSET = struct.Struct("<d"), 16             # a slot's last use
# Float arithmetic must not refuse a request that lands exactly on the rate.
_SLACK = 1e-9
# A slot last used this far after "now" was left by another boot's clock: another process
# of this boot may be a little ahead (it read its clock after ours, and locked first).
_FUTURE = 1.0


class RateTable:
    """The GCRA states of every key, in a fixed mapping; see the module docstring.

    ``path``: a file shared by the processes that map it (made if absent); None: an
    anonymous mapping of this process, without locks. ``slots``: a power of two."""

    def __init__(self, path: str | None = None, slots: int = SLOTS):
        assert slots > 0 and slots & (slots - 1) == 0, "slots must be a power of two"
        self.path = path
        self.slots = slots
        self._mask = slots - 1
        self.size = _HEADER_SIZE + (slots + PROBE) * _SLOT_SIZE     # a window never wraps
        self._fd = None
        if path is None:
            self._map = mmap.mmap(-1, self.size)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size < self.size:
                os.ftruncate(self._fd, self.size)      # sparse: pages cost when touched
            self._map = mmap.mmap(self._fd, self.size)
        self._secret = self._header()

    def _header(self) -> bytes:
        """The table's hash key, written by the first process to map the table."""
        self._lock(0, _HEADER_SIZE)
        try:
            magic, secret = _HEADER.unpack_from(self._map, 0)
            if magic != MAGIC:
                secret = os.urandom(16)
                _HEADER.pack_into(self._map, 0, MAGIC, secret)
            return secret
        finally:
            self._unlock(0, _HEADER_SIZE)

    def admit(self, key: str, interval: float, tolerance: float, now: float) -> float:
        """GCRA for ``key`` at ``now``: 0.0 if admitted (and counted), else the seconds
        until it would be.

        The key's slot is found by a 64-bit hash of it (never 0, the empty slot), keyed
        by the table's secret: a client cannot choose keys that crowd one window."""
        hashed = int.from_bytes(blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8,
                                        key=self._secret).digest(), "little") or 1
        offset = _HEADER_SIZE + (hashed & self._mask) * _SLOT_SIZE
        table, fd = self._map, self._fd
        if fd is not None:
            lockf(fd, LOCK_EX, _WINDOW_SIZE, offset)
        try:
            held, tat, _ = _SLOT.unpack_from(table, offset)
            slot = 0
            if held != hashed:               # at home: nearly always; else the window
                slot, tat = _place(_WINDOW.unpack_from(table, offset), hashed, now)
            if tat < now:
                tat = now
            elif tat > now + tolerance + interval:
                # Beyond what this limit can leave (a lowered limit, a clock that went
                # back): taken as the most it can be.
                tat = now + tolerance + interval
            wait = tat - now - tolerance
            if wait > _SLACK:
                # Refused, yet in use: the key is not the idle one to give up first.
                _LAST.pack_into(table, offset + slot * _SLOT_SIZE + _LAST_OFFSET, now)
                return wait
            _SLOT.pack_into(table, offset + slot * _SLOT_SIZE, hashed, tat + interval, now)
            return 0.0
        finally:
            if fd is not None:
                lockf(fd, LOCK_UN, _WINDOW_SIZE, offset)

    def _lock(self, start: int, length: int) -> None:
        if self._fd is not None:
            lockf(self._fd, LOCK_EX, length, start)

    def _unlock(self, start: int, length: int) -> None:
        if self._fd is not None:
            lockf(self._fd, LOCK_UN, length, start)

    def close(self) -> None:
        """Unmap the table (the file stays for the rest of the group)."""
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _place(window: tuple, hashed: int, now: float) -> tuple[int, float]:
    """The slot of a window for a key and its stored tat: its own slot; else a free one
    (empty, or its state run out: the same as none, or used after ``now``: left by a
    clock before a reboot, in a group directory kept) with ``now``; else the one used
    longest ago, whose key starts afresh."""
    free = oldest = -1
    for slot in range(PROBE):
        held = window[3 * slot]
        if held == hashed:
            return slot, window[3 * slot + 1]
        if free < 0:
            if held == 0 or window[3 * slot + 1] <= now or window[3 * slot + 2] > now + _FUTURE:
                free = slot
            elif oldest < 0 or window[3 * slot + 2] < window[3 * oldest + 2]:
                oldest = slot
    return (free if free >= 0 else oldest), now


class RateLimit:
    """One pool's limit: ``rate`` requests a second, ``burst`` above it at once, its keys
    kept in ``table`` under the pool's ``name`` (a route kept by a reload keeps them)."""

    def __init__(self, name: str, rate: float, burst: int, table: RateTable,
                 clock=time.monotonic):
        self.name = name
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        self.tolerance = burst * self.interval
        self.table = table
        self.clock = clock          # CLOCK_MONOTONIC: one clock for every process of a host

    def check(self, key: str, now: float | None = None) -> float:
        """0.0 if a request of ``key`` is admitted now (and counted), else the seconds
        until one would be."""
        return self.table.admit(f"{self.name}\0{key}", self.interval, self.tolerance,
                                self.clock() if now is None else now)


def retry_after(wait: float) -> int:
    """``Retry-After`` for a wait: whole seconds, at least 1 (RFC 9110 §10.2.3)."""
    return max(1, math.ceil(wait))


def open_table(group_dir: str | None) -> RateTable:
    """The group's table (a file in ``group_dir``), or this process's own."""
    return RateTable(os.path.join(group_dir, TABLE_NAME) if group_dir else None)
