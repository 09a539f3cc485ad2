"""Admin states: what an operator set on a backend at run time (SPEC §9), and where it is kept.

An ``Override`` is one backend's admin state (``ready``, ``drain``, ``maint``: HAProxy's
words) and run-time weight (None: the configured one), keyed by (pool name, backend URL).
``AdminStates`` owns the rules: ``change`` checks a change and records it; ``apply`` makes
every backend of the runtime in force say what the store says (a backend the store does
not name is ``ready`` with its configured weight), through ``Backend.set_admin``, the one
place a backend's admin state changes; ``retain`` forgets the overrides of backends a
reload removed.

The store is where overrides live, behind three methods (``load``, ``change``,
``retain``), so that another one can stand in:

- ``MemoryStore``: one process (``python wsgi.py``); a restart forgets it.
- ``FileStore``: a gunicorn group. One JSON file in ``$MYPROXY_GROUP_DIR``, replaced whole
  (written aside, then renamed) under an exclusive ``flock``, so that two workers taking
  calls at once both count. Every worker reads it at each group round and at its start
  (``app.lb.shared.GroupView``): a change made in one worker holds in all within a round,
  and a replaced worker starts with it. The file lives as long as the master's directory.
- ``app.lb.cluster.RedisStore``: several instances (``cluster``), in their Redis.

It knows nothing of HTTP (``app.middleware.api`` answers the calls) or of the group's
other records. Imports only ``balancer``'s types.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from dataclasses import dataclass
from typing import Callable

from .balancer import ADMIN_STATES, Backend, Balancer

STORE_NAME = "admin.json"
LOCK_NAME = "admin.lock"
KEEP = object()          # a field a change leaves as it is


@dataclass(frozen=True)
class Override:
    """One backend's admin state and run-time weight; ``since``: when the state took its
    value (0: never changed; back to ``ready`` ramps up under slow start from then);
    ``changed``: when anything in it last changed."""

    state: str = "ready"
    weight: int | None = None
    since: float = 0.0
    changed: float = 0.0


class StoreUnavailable(RuntimeError):
    """The store cannot take a change now (the cluster's Redis is down, ``app.lb.cluster``):
    a change made here only would be undone when it answers again."""


class UnknownTarget(LookupError):
    """A change names a route or a backend that is not in the runtime in force."""


class BadField(ValueError):
    """A change's field has a value it cannot take; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class AdminStates:
    """The admin states of one process (or group), over ``store``."""

    def __init__(self, store, clock: Callable[[], float] = time.time):
        self.store = store
        self._clock = clock

    def change(self, pools: dict[str, Balancer], pool: str, url: str, state=KEEP,
               weight=KEEP) -> tuple[Backend, Override, Override]:
        """Set ``state`` and/or ``weight`` (None: back to the configured weight) of one
        backend, here at once and in the store; return the backend and its override before
        and after. Raises ``UnknownTarget`` or ``BadField``."""
        if state is not KEEP and state not in ADMIN_STATES:
            raise BadField("state", f"must be one of {', '.join(ADMIN_STATES)}")
        if weight is not KEEP and weight is not None and (type(weight) is not int or weight < 0):
            raise BadField("weight", "must be a whole number, 0 or more (as in the config), "
                                     "or null for the configured one")
        balancer = pools.get(pool)
        if balancer is None:
            raise UnknownTarget(f"no route named {pool!r}")
        backend = balancer.find(url)
        if backend is None:
            raise UnknownTarget(f"route {pool!r} has no backend {url!r}")
        now = self._clock()
        before: list[Override] = []

        def update(current: Override | None) -> Override:
            current = current or Override()
            before.append(current)
            new = current
            if state is not KEEP and state != current.state:
                new = dataclasses.replace(new, state=state, since=now)
            if weight is not KEEP:
                new = dataclasses.replace(new, weight=weight)
            return dataclasses.replace(new, changed=now) if new != current else current

        after = self.store.change((pool, url), update)
        backend.set_admin(after.state, after.weight, after.since)
        return backend, before[0], after

    def apply(self, pools: dict[str, Balancer]) -> None:
        """Make every backend of ``pools`` (name -> balancer) say what the store says."""
        overrides = self.store.load()
        for name, balancer in pools.items():
            for backend in balancer.backends:
                entry = overrides.get((name, backend.url))
                if entry is None:
                    if backend.admin_state != "ready" or backend.admin_weight is not None:
                        backend.set_admin("ready", None, 0.0)
                else:
                    backend.set_admin(entry.state, entry.weight, entry.since)

    def retain(self, pools: dict[str, Balancer]) -> None:
        """Forget the overrides of backends no longer configured (a reload took them away):
        one that comes back later comes back ``ready``. A DNS member is kept while its
        entry is configured, for DNS may give its address back."""
        entries = {name: ({b.url for b in balancer.backends if b.endpoint is None},
                          tuple(f"{url} (" for url in balancer.templates))
                   for name, balancer in pools.items()}

        def configured(key: tuple[str, str]) -> bool:
            pool, url = key
            if pool not in entries:
                return False
            urls, members = entries[pool]
            return url in urls or url.startswith(members)
        self.store.retain(configured)


class MemoryStore:
    """Overrides in this process's memory."""

    def __init__(self):
        self._entries: dict[tuple[str, str], Override] = {}

    def load(self) -> dict[tuple[str, str], Override]:
        return dict(self._entries)

    def change(self, key: tuple[str, str], update: Callable[[Override | None], Override]) -> Override:
        """Replace ``key``'s override with ``update(current)``, at once for all readers."""
        self._entries[key] = update(self._entries.get(key))
        return self._entries[key]

    def retain(self, keep: Callable[[tuple[str, str]], bool]) -> None:
        self._entries = {key: value for key, value in self._entries.items() if keep(key)}


class FileStore:
    """Overrides in one file of a directory the processes of a group share."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, STORE_NAME)
        self._lock_path = os.path.join(directory, LOCK_NAME)
        self._seen: tuple | None = None        # the file's identity when last read
        self._entries: dict[tuple[str, str], Override] = {}

    def load(self) -> dict[tuple[str, str], Override]:
        """The overrides as the file has them; read again only when it was replaced."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._entries = None, {}
            return {}
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if identity != self._seen:
            self._entries, self._seen = self._read(), identity
        return dict(self._entries)

    def change(self, key: tuple[str, str], update: Callable[[Override | None], Override]) -> Override:
        with self._locked():
            entries = self._read()
            entries[key] = update(entries.get(key))
            self._write(entries)
        return entries[key]

    def retain(self, keep: Callable[[tuple[str, str]], bool]) -> None:
        with self._locked():
            entries = self._read()
            kept = {key: value for key, value in entries.items() if keep(key)}
            if kept != entries:
                self._write(kept)

    def _locked(self):
        return _FileLock(self._lock_path)

    def _read(self) -> dict[tuple[str, str], Override]:
        try:
            with open(self.path) as file:
                rows = json.load(file)
        except FileNotFoundError:
            return {}
        return {(row["pool"], row["backend"]): Override(row["state"], row["weight"],
                                                        row["since"], row["changed"])
                for row in rows}

    def _write(self, entries: dict[tuple[str, str], Override]) -> None:
        rows = [{"pool": pool, "backend": url, **dataclasses.asdict(override)}
                for (pool, url), override in sorted(entries.items())]
        aside = f"{self.path}.{os.getpid()}.tmp"
        with open(aside, "w") as file:
            json.dump(rows, file, separators=(",", ":"))
        os.replace(aside, self.path)


class _FileLock:
    """An exclusive ``flock`` on a file while in the ``with`` block. It is held for one
    read and one write of a small file, so waiting for it blocks the process briefly."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    def __enter__(self) -> None:
        self._file = open(self.path, "a+b")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        self._file.close()          # closing lets go of the lock

