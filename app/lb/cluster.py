"""Several instances, one balancer: what they share through Redis (SPEC §10, ``cluster``).

``Cluster`` is one instance's link to the deployment's Redis, and the circuit around it.
Every call goes through ``call``: bounded by ``cluster.timeout`` (socket timeouts, and a
``gevent.Timeout`` over the whole call), and made only while the link is up. A call that
fails, or the ``LATE_IN_A_ROW``-th late one in a row, takes the link down (a late call
alone falls back for its own request): requests stop calling Redis at once (a dead Redis
then costs them one attribute test), the outage is logged once, ``myproxy_cluster_up``
says 0, and the link's loop tries a ``PING`` every ``RETRY`` seconds until one answers:
the recovery is logged once and the gauge says 1 again. Nothing a request does ever
fails because of Redis: each thing shared has its fallback.

What is shared, all under ``{prefix}:``:

- **Rate limits** (``SharedLimit``): GCRA, as ``app.lb.ratelimit`` computes it, in one Lua
  script per check, atomic in Redis, on Redis's own clock (instances' clocks may differ);
  a key's state is ``rl:{pool}:{key}`` with a TTL of the time it holds. Down: the
  instance's own limit (``RateLimit``: the group's, under gunicorn) decides; never none.
- **Admin states** (``RedisStore``, the store of ``app.lb.overrides.AdminStates``): the hash
  ``admin``, one field per (pool, backend). The loop reads it every ``SYNC_INTERVAL`` and
  applies it, so a drain sent to one instance holds in all within a second, and in an
  instance started later (it survives restarts). Down: the last values read stay; a change
  is refused (``StoreUnavailable``) rather than made here only and undone at the recovery.
- **Passive ejections**: the hash ``ejected``, one field per (pool, backend):
  ``[since, until]`` (wall clock), or ``[since, null]`` once the backend came back after
  its ejection ran out (a passing health check: the return). Each round, the loop
  publishes this instance's news newer than the entry (written in Redis only over an older
  entry, so a return seen late never undoes a newer ejection), and applies the others': an
  ejection still running holds here as if made here (until its time is up and a check
  passes here); a return newer than this instance's last change ends it at once. Under a
  gunicorn group only the leader exchanges them (the others follow it, ``app.lb.shared``).

Health checks stay each instance's own; sticky cookies need nothing shared. It imports
the ``redis`` package lazily (only with ``cluster.redis``) and knows nothing of HTTP.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Callable

import gevent

from ..config import ClusterConfig, redact_url
from .balancer import Backend, Balancer
from .overrides import Override, StoreUnavailable
from .ratelimit import RateLimit
from .rounds import Rounds

log = logging.getLogger("myproxy.cluster")

SYNC_INTERVAL = 0.25     # seconds between two rounds of the loop (admin states, ejections)
RETRY = 1.0              # seconds between two PINGs while Redis is down
FORGET = 60.0            # seconds an ended ejection or a return is kept, then removed
# Late answers in a row that take the link down. One late answer is weak news: a busy
# process resumes a greenlet late (measured: a saturated instance, Redis well). An error
# (refused, reset, a wrong password) takes it down at once.
LATE_IN_A_ROW = 3

# GCRA in microseconds on Redis's clock: KEYS[1] the key's tat; ARGV interval, tolerance.
# Returns 0 when admitted (and counted), else the microseconds to wait.
# Ejection news, (field, entry) pairs, each written only over an older entry (its ``since``
# first): an instance that read the hash before another instance's newer news (a return it
# saw against an ejection made since) must not write over it. Rare: only with news.
_PUBLISH_NEWER = """
local written = 0
for i = 1, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local since = cjson.decode(ARGV[i + 1])[1]
  if not current or cjson.decode(current)[1] < since then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    written = written + 1
  end
end
return written
"""

_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat > now + tolerance + interval then tat = now + tolerance + interval end
local wait = tat - now - tolerance
if wait > 0 then return wait end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return 0
"""


class Cluster:
    """The link to Redis (``settings``: ``ClusterConfig``) and the loop that shares admin
    states and ejections of ``pools()`` (name -> balancer). ``on_up(bool)`` sees every
    change of the link (the metric); ``leading()`` says whether this process exchanges
    ejections (a gunicorn group's leader; alone: always); ``apply()`` makes the backends
    say what the admin store says (``AdminStates.apply`` over the runtime in force)."""

    def __init__(self, settings: ClusterConfig, pools: Callable[[], dict[str, Balancer]],
                 on_up: Callable[[bool], None] = lambda up: None,
                 leading: Callable[[], bool] = lambda: True,
                 apply: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time):
        import redis
        self.settings = settings
        self.prefix = settings.prefix
        self.timeout = settings.timeout
        self.where = redact_url(settings.redis)
        self.client = redis.Redis.from_url(
            settings.redis, socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout, retry_on_timeout=False)
        self._errors = (redis.RedisError, OSError)
        self._no_script = redis.exceptions.NoScriptError
        self._gcra_sha = hashlib.sha1(_GCRA.encode()).hexdigest()
        self.pools = pools
        self.on_up = on_up
        self.leading = leading
        self.apply = apply
        self._clock = clock
        self.up = False              # until the first round answers
        self._said_down = False      # the outage has been logged
        self._late = 0               # late answers in a row
        self._next_ping = 0.0
        self.admin: dict[tuple[str, str], Override] = {}   # the last values read
        self.changes = 0             # changes made here: a read that began before one is stale
        self._rounds = Rounds(self.sync_once, SYNC_INTERVAL, "cluster round", log)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def gcra(self, key: str, interval: int, tolerance: int) -> int:
        """The GCRA script on ``key`` (µs): by its SHA1, sent whole only when Redis does not
        have it (its first use, a restarted Redis). Call it through ``call``."""
        try:
            return self.client.evalsha(self._gcra_sha, 1, key, interval, tolerance)
        except self._no_script:
            return self.client.eval(_GCRA, 1, key, interval, tolerance)

    # -- the link --

    def call(self, action: Callable, *args, **kwargs):
        """``action(*args, **kwargs)`` (a call on ``self.client``), within ``timeout``.
        Raises ``StoreUnavailable`` when the link is down, or the call fails (which takes
        the link down) or is late (the ``LATE_IN_A_ROW``-th in a row takes it down)."""
        if not self.up:
            raise StoreUnavailable("Redis unreachable")
        return self._bounded(action, *args, **kwargs)

    def _bounded(self, action: Callable, *args, **kwargs):
        timer = gevent.Timeout(self.timeout)
        timer.start()
        try:
            answer = action(*args, **kwargs)
            self._late = 0
            return answer
        except gevent.Timeout as late:
            if late is not timer:
                raise
            self._late += 1
            if self._late >= LATE_IN_A_ROW or not self.up:
                self._down(f"{self._late} answer(s) in a row later than {self.timeout * 1000:g}ms")
        except self._errors as error:
            self._down(str(error) or type(error).__name__)
        finally:
            timer.close()
        raise StoreUnavailable("Redis unreachable")

    def _down(self, reason: str) -> None:
        if not self._said_down:              # once an outage, however many calls fail
            log.warning("cluster: Redis at %s failed (%s): each instance applies its own rate "
                        "limits, admin states keep their last values, until it answers",
                        self.where, reason)
            self._said_down = True
        self.up = False
        self._next_ping = time.monotonic() + RETRY
        self.on_up(False)

    def _ping(self) -> bool:
        """While down: one PING every ``RETRY`` seconds; the first answer brings it up."""
        if self.up:
            return True
        if time.monotonic() < self._next_ping:
            return False
        try:
            self._bounded(self.client.ping)
        except StoreUnavailable:
            return False
        self.up = True
        if self._said_down:
            log.warning("cluster: Redis at %s answers again: rate limits, admin states and "
                        "ejections are shared again", self.where)
        else:
            log.info("cluster: Redis at %s answers: rate limits, admin states and ejections "
                     "are shared", self.where)
        self._said_down = False
        self.on_up(True)
        return True

    # -- the loop --

    def start(self) -> None:
        """One round at once (an instance starts with the shared admin states), then a
        round every ``SYNC_INTERVAL`` in a greenlet. Call after any fork."""
        self._rounds.start()

    def stop(self) -> None:
        """Stop the loop and close the connections; safe to call twice."""
        if self._rounds.stop():
            self.client.close()

    def sync_once(self) -> None:
        """Read the admin states and the ejections in one round trip; apply them; publish
        this instance's ejections and returns."""
        if not self._ping():
            return
        changes = self.changes
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.key("admin"))
            pipe.hgetall(self.key("ejected"))
            admin, ejected = self.call(pipe.execute)
        except StoreUnavailable:
            return
        if changes == self.changes:
            self.admin = {tuple(json.loads(field)): Override(**json.loads(value))
                          for field, value in admin.items()}
            self.apply()
        if self.leading():
            self._exchange({tuple(json.loads(field)): json.loads(value)
                            for field, value in ejected.items()})

    def _exchange(self, entries: dict[tuple[str, str], list]) -> None:
        now = self._clock()
        publish: dict[str, str] = {}
        for pool, balancer in self.pools().items():
            for backend in list(balancer.backends):
                entry = entries.pop((pool, backend.url), None)
                mine = _news(backend, entry)
                if mine is not None:
                    publish[json.dumps([pool, backend.url])] = json.dumps(mine)
                elif entry is not None:
                    _take(backend, entry, now)
        stale = [json.dumps(list(key)) for key, (since, until) in entries.items()
                 if (until if until is not None else since) < now - FORGET]
        if publish or stale:
            pipe = self.client.pipeline(transaction=False)
            if publish:             # each over an older entry only (_PUBLISH_NEWER)
                flat = [part for field, entry in publish.items() for part in (field, entry)]
                pipe.eval(_PUBLISH_NEWER, 1, self.key("ejected"), *flat)
            if stale:
                pipe.hdel(self.key("ejected"), *stale)
            try:
                self.call(pipe.execute)
            except StoreUnavailable:
                pass


def _news(backend: Backend, entry: list | None) -> list | None:
    """What this instance has to tell of ``backend`` over ``entry``: an ejection of its own
    newer than the entry; or the return, when the backend came back here (a passing check)
    after the entry's ejection ran out; else None."""
    if backend.ejected_until is not None and backend.healthy:
        if entry is None or backend.since > entry[0]:
            return [backend.since, backend.ejected_until]
    elif entry is not None and entry[1] is not None and backend.healthy \
            and backend.since >= entry[1]:
        return [backend.since, None]
    return None


def _take(backend: Backend, entry: list, now: float) -> None:
    """Apply another instance's news of ``backend``: an ejection still running (a backend
    that is down here stays down: its checks decide), or a return newer than this
    instance's own last change of the backend's state."""
    since, until = entry
    if until is not None:
        if until > now and backend.healthy and \
                (backend.ejected_until is None or until > backend.ejected_until):
            backend.follow(True, until, since, backend.recovered_at)
    elif backend.ejected_until is not None and since > backend.since:
        backend.follow(True, None, since, since)


class SharedLimit:
    """One pool's rate limit for every instance together, with ``local`` (the instance's
    own ``RateLimit``) as its fallback: the same ``check(key)`` as ``RateLimit``."""

    def __init__(self, local: RateLimit, pool: str, cluster: Cluster):
        self.local = local
        self.cluster = cluster
        self.prefix = cluster.key("rl", pool) + ":"
        self.interval = round(local.interval * 1e6)
        self.tolerance = round(local.tolerance * 1e6)

    def check(self, key: str, now: float | None = None) -> float:
        """0.0 if admitted (and counted), else the seconds to wait; Redis's answer while it
        gives one within the timeout, else the local limit's."""
        cluster = self.cluster
        if cluster.up:
            try:
                return cluster.call(cluster.gcra, self.prefix + key, self.interval,
                                    self.tolerance) / 1e6
            except StoreUnavailable:
                pass
        return self.local.check(key, now)


class RedisStore:
    """Admin states in the cluster's Redis hash (``AdminStates``' store): ``load`` gives
    the last values the loop read; ``change`` is made in Redis, atomically (WATCH), and
    raises ``StoreUnavailable`` while Redis is down."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def load(self) -> dict[tuple[str, str], Override]:
        return dict(self.cluster.admin)

    def change(self, key: tuple[str, str], update: Callable[[Override | None], Override]) -> Override:
        cluster = self.cluster
        name, field = cluster.key("admin"), json.dumps(list(key))

        def transact(pipe) -> Override:
            raw = pipe.hget(name, field)
            new = update(Override(**json.loads(raw)) if raw else None)
            pipe.multi()
            pipe.hset(name, field, json.dumps(dataclasses.asdict(new)))
            return new
        new = cluster.call(cluster.client.transaction, transact, name, value_from_callable=True)
        cluster.changes += 1
        cluster.admin = {**cluster.admin, key: new}
        return new

    def retain(self, keep: Callable[[tuple[str, str]], bool]) -> None:
        """Forget here, not in Redis: other instances may have a config that still names
        the backend (a rolling change); an entry no config names is never applied."""
        self.cluster.admin = {key: value for key, value in self.cluster.admin.items() if keep(key)}
