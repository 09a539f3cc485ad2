"""The slot table of a gunicorn group: requests in flight to each capped backend, and
requests waiting in each pool's queue, per worker, in one file of shared memory.

``max_conns`` holds for the group, never N times over (SPEC §8). Every worker maps
``slots.table`` in the group's directory (``$MYPROXY_GROUP_DIR``, made before the fork) and
owns one column of it: the column whose ``slots-N.lock`` it holds with ``flock`` for its
life. A row is a key (``pool`` and backend URL for a slot count; ``pool`` alone for a
queue's waiters) and one 32-bit count per column. A worker changes only its own column, and
only under an exclusive ``flock`` on the table, held for a few memory operations (never
across a yield): so ``take`` sees the group's sum and adds one only while it is under the
cap. Reads for a choice (``count``) take no lock; ``take`` checks again under it.

A worker that dies leaves its column behind, but not its slots: the kernel lets go of its
column lock; the next worker to take that column zeroes it, and every worker's sweep
(``SWEEP_EVERY``) zeroes the column of an owner pid that is gone, so a crash strands slots
for at most that long.

The queue is first in, first out for the group: each worker publishes when its first
waiter of a pool began to wait (``since``, a word of its own that only it writes). A worker
that frees a slot gives it to its own first waiter only when no other worker's has waited
longer; otherwise it leaves the slot free and wakes that worker: each worker listens on a
datagram socket in the group directory (``wake-PID.sock``), and ``poke`` sends it the
pool's name; the receiving worker hands the slot to its first waiter (``Capacity.offer``).
While any request waits in the group, a new one queues behind it rather than take a slot
that is free only until the woken worker takes it.

It knows nothing of HTTP, of backends or of pools beyond their names.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import socket
import time
from typing import Callable

import gevent

from .group import process_alive

log = logging.getLogger("myproxy.slots")

TABLE_NAME = "slots.table"
COLUMN_LOCK = "slots-{}.lock"
WAKE_SOCKET = "wake-{}.sock"
COLUMNS = 128           # workers of one group at once
ROWS = 2048             # (pool, backend) slot counts and pool queues
ROW_WORDS = 2 + COLUMNS     # a 64-bit key in two words, then a count per column
SWEEP_EVERY = 1.0       # seconds between two looks for the columns of dead workers
_WORD = 4


class SlotTable:
    """This worker's side of the group's slot table (module docstring). Opened at first
    use in each process, so that one made before gunicorn's fork serves every worker."""

    def __init__(self, directory: str):
        self.directory = directory
        self._pid = None
        self._table = None       # the mmap
        self._words = None       # a memoryview of uint32 over it
        self._fd = None
        self._column_lock = None
        self.column = None
        self._rows: dict[str, int] = {}
        self._wake = None
        self._send_sock = None
        self._listener = None

    # -- the counts --

    def take(self, pool: str, url: str, cap: int) -> bool:
        """Add one to this worker's count of ``url`` if the group's sum is under ``cap``."""
        words, row = self._open(), self._row(f"{pool}\n{url}")
        start = _counts(row)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if sum(words[start:start + COLUMNS]) >= cap:
                return False
            words[start + self.column] += 1
            return True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self, pool: str, url: str) -> int | None:
        """Take one off this worker's count of ``url``. Return the pid of the worker whose
        first waiter in ``pool`` has waited longest, when that is another worker (then
        ``poke`` it: the slot is its), else None (this worker's own waiter, or none)."""
        words, row = self._open(), self._row(f"{pool}\n{url}")
        start = _counts(row)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if words[start + self.column] > 0:
                words[start + self.column] -= 1
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if not self.waiting(pool):
            return None          # nobody waits: nothing to look up (nearly always)
        column = self._first(pool)
        if column is None or column == self.column:
            return None
        return words[column] or None

    def first_here(self, pool: str) -> bool:
        """Whether no other worker's first waiter in ``pool`` has waited longer than ours."""
        column = self._first(pool)
        return column is None or column == self.column

    def _first(self, pool: str) -> int | None:
        """The column whose first waiter in ``pool`` has waited longest, None if none waits."""
        words = self._open()
        start = _counts(self._row(f"{pool}\nsince"))
        best, best_column = 0, None
        for column, since in enumerate(words[start:start + COLUMNS]):
            if since and (best_column is None or _older(since, best)):
                best, best_column = since, column
        return best_column

    def since(self, pool: str, ticket: int) -> None:
        """When this worker's first waiter in ``pool`` began to wait (``ticket``, from
        ``ticket()``); 0 when none waits here."""
        words, at = self._open(), _counts(self._row(f"{pool}\nsince")) + self.column
        words[at] = ticket       # one aligned word, this worker's own: no lock needed

    @staticmethod
    def ticket() -> int:
        """The time now as a 32-bit word that orders waits across workers (the machine's
        monotonic clock, in tenths of a millisecond; never 0)."""
        return int(time.monotonic() * 10_000) % 0xFFFFFFFF + 1

    def count(self, pool: str, url: str) -> int:
        """The group's requests in flight to ``url`` (read without the lock)."""
        words, row = self._open(), self._row(f"{pool}\n{url}")
        start = _counts(row)
        return sum(words[start:start + COLUMNS])

    def wait(self, pool: str, delta: int) -> None:
        """One more (``1``) or one fewer (``-1``) of this worker's requests waits in ``pool``."""
        words, row = self._open(), self._row(pool)
        at = _counts(row) + self.column
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            words[at] = max(0, words[at] + delta)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def waiting(self, pool: str) -> int:
        """The group's requests waiting in ``pool``'s queue."""
        words, row = self._open(), self._row(pool)
        start = _counts(row)
        return sum(words[start:start + COLUMNS])

    # -- waking the others --

    def poke(self, pool: str, pid: int) -> None:
        """Tell worker ``pid`` that a slot of ``pool`` is free for its first waiter."""
        try:
            self._sender().sendto(pool.encode(), self._wake_path(pid))
        except OSError:
            pass             # gone, or its socket is full: its safety net looks again

    def start(self, on_wake: Callable[[str], None]) -> None:
        """Listen for pokes (``on_wake(pool)``), and sweep dead workers' columns."""
        self._open()
        if self._listener is None:
            self._listener = gevent.spawn(self._listen, on_wake)

    def stop(self) -> None:
        """Stop listening; this worker's counts go (its requests are over). Safe twice."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.kill(block=True, timeout=1)
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        if self._words is not None and self._pid == os.getpid():
            try:
                os.unlink(self._wake_path(self._pid))
            except OSError:
                pass
            self._clear(self.column)

    def sweep(self) -> None:
        """Zero the columns whose owner is no longer alive."""
        words = self._open()
        for column in range(COLUMNS):
            pid = words[column]
            if pid and column != self.column and not process_alive(pid):
                self._clear(column)

    # -- inside --

    def _listen(self, on_wake: Callable[[str], None]) -> None:
        path = self._wake_path(os.getpid())
        try:
            os.unlink(path)
        except OSError:
            pass
        sock = self._wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(SWEEP_EVERY)
        while True:
            try:
                data = sock.recv(512)
            except socket.timeout:
                data = None
            except OSError:
                return
            try:
                if data:
                    on_wake(data.decode("utf-8", "replace"))
                else:
                    self.sweep()
            except Exception:  # noqa: BLE001 - a background loop never dies silently
                log.exception("slot table: a wake-up failed; going on")

    def _sender(self):
        if self._send_sock is None:
            self._send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._send_sock.setblocking(False)
        return self._send_sock

    def _wake_path(self, pid: int) -> str:
        return os.path.join(self.directory, WAKE_SOCKET.format(pid))

    def _open(self) -> memoryview:
        pid = os.getpid()
        if self._pid == pid:
            return self._words
        # A new process (the first use, or a fork): its own mapping, lock and column.
        self._pid, self._rows, self._send_sock, self._wake = pid, {}, None, None
        path = os.path.join(self.directory, TABLE_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        size = (COLUMNS + ROWS * ROW_WORDS) * _WORD
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._fd = fd
        self._table = mmap.mmap(fd, size)
        self._words = memoryview(self._table).cast("I")
        self.column = self._claim_column()
        return self._words

    def _claim_column(self) -> int:
        for column in range(COLUMNS):
            lock = open(os.path.join(self.directory, COLUMN_LOCK.format(column)), "a+b")
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._column_lock = lock       # held for the process's life
            self._clear(column)            # a dead owner's counts are no one's
            self._words[column] = os.getpid()
            return column
        raise RuntimeError(f"slot table: more than {COLUMNS} workers in one group")

    def _clear(self, column: int) -> None:
        """Zero a column's counts and owner."""
        words = self._words
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for row in range(ROWS):
                words[_counts(row) + column] = 0
            words[column] = 0
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _row(self, key: str) -> int:
        row = self._rows.get(key)
        if row is not None:
            return row
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        high, low = int.from_bytes(digest[:4], "big") | 1, int.from_bytes(digest[4:], "big")
        words = self._words
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            row = (high ^ low) % ROWS
            for _ in range(ROWS):
                at = COLUMNS + row * ROW_WORDS
                if words[at] == high and words[at + 1] == low:
                    break
                if words[at] == 0:
                    words[at], words[at + 1] = high, low
                    break
                row = (row + 1) % ROWS
            else:
                raise RuntimeError(f"slot table: more than {ROWS} pools and backends")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._rows[key] = row
        return row


def _older(first: int, second: int) -> bool:
    """Whether ticket ``first`` is older than ``second``, across the 32-bit wrap."""
    return 0 < (second - first) % 0x100000000 < 0x80000000


def _counts(row: int) -> int:
    """Where a row's counts start, in words: after the owners' pids and the row's key."""
    return COLUMNS + row * ROW_WORDS + 2
