"""The process group of gunicorn workers: which one leads, and each one's published record.

The workers of one gunicorn master share a directory (``$MYPROXY_GROUP_DIR``, made by
``gunicorn.conf.py`` before the fork). Each worker writes its record, a small JSON
document, to ``worker-PID.json``, replacing the file whole (written aside, then renamed:
a reader never sees half of one), and reads the others'. The file of a worker that died
stays: what it counted still counts; ``alive`` says it is gone.

One worker at a time leads: the one holding an exclusive ``flock`` on ``leader.lock``.
The kernel lets go of the lock when that process dies, however it dies, so the next
worker that tries takes over; nothing has to notice the death or clean up after it.

It knows nothing of what the records hold (``app.lb.shared`` does) or of HTTP.
"""
from __future__ import annotations

import fcntl
import glob
import json
import os
import signal

LOCK_NAME = "leader.lock"
RECORD_PATTERN = "worker-*.json"


class ProcessGroup:
    """This process's membership of the group in ``directory``."""

    def __init__(self, directory: str, pid: int | None = None):
        self.directory = directory
        self._pid = pid
        self._lock_file = None
        self.leading = False

    @property
    def pid(self) -> int:
        """This worker's pid: asked when used, for the group may be made before the fork
        (``gunicorn --preload`` builds the app in the master)."""
        return self._pid or os.getpid()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"worker-{self.pid}.json")

    def try_lead(self) -> bool:
        """Take the leader's lock if it is free; return whether this process leads."""
        if self.leading:
            return True
        if self._lock_file is None:
            self._lock_file = open(os.path.join(self.directory, LOCK_NAME), "a+b")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.leading = True
        return True

    def publish(self, record: dict) -> None:
        """Replace this process's record."""
        aside = self.path + ".tmp"
        with open(aside, "w") as file:
            json.dump(record, file, separators=(",", ":"))
        os.replace(aside, self.path)

    def records(self) -> dict[int, dict]:
        """Every worker's last record by pid, this one's included, each with ``alive``."""
        found = {}
        for path in glob.glob(os.path.join(self.directory, RECORD_PATTERN)):
            try:
                pid = int(os.path.basename(path)[len("worker-"):-len(".json")])
                with open(path) as file:
                    record = json.load(file)
            except (ValueError, OSError):
                continue         # being replaced right now, or not one of ours
            record["alive"] = pid == self.pid or process_alive(pid)
            found[pid] = record
        return found

    def signal_reload(self, pids) -> None:
        """Send SIGHUP to these workers of the group: each reloads the config in place."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass             # gone since its last record

    def close(self) -> None:
        """Let go of the leader's lock (the kernel does it too when the process ends)."""
        lock, self._lock_file = self._lock_file, None
        self.leading = False
        if lock is not None:
            lock.close()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a worker of the group, by its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True          # someone else's process: not ours to judge
    return True
