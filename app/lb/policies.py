"""Selection policies: which of the candidate backends takes the next request.

A policy is a small object with ``pick(candidates, weights, key)``. ``candidates`` are the
backends that may take the request (the balancer has already left out the down, ejected,
drained and already-tried ones), ``weights`` their effective weights (configured weight
times the slow-start ramp), ``key`` the request's hash key or None. A policy reads only
``url`` and ``in_flight`` from a backend, keeps its own state, does no I/O and never reads
the clock, so each is tested with plain asserts. Imports nothing from the app.
"""
from __future__ import annotations

import hashlib
import math
import random
from typing import Protocol, Sequence


class Policy(Protocol):
    def pick(self, candidates: Sequence, weights: Sequence[float], key: str | None = None): ...


class RoundRobin:
    """nginx's smooth weighted round-robin: with equal weights, a plain rotation.

    Each candidate gains its weight; the one with the most is chosen and pays back the
    total. Weights 5,1,1 give a a b a c a a rather than a a a a a b c.
    """

    def __init__(self):
        self._current: dict[str, float] = {}

    def pick(self, candidates, weights, key=None):
        total = 0.0
        best, best_score = None, 0.0
        for backend, weight in zip(candidates, weights):
            score = self._current.get(backend.url, 0.0) + weight
            self._current[backend.url] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = backend, score
        self._current[best.url] = best_score - total
        return best


class LeastConnections:
    """Fewest in-flight requests per unit of weight, ``(in_flight + 1) / weight`` as in
    HAProxy's ``leastconn``; candidates that tie take turns."""

    def __init__(self):
        self._turn = 0

    def pick(self, candidates, weights, key=None):
        scores = [_load(backend, weight) for backend, weight in zip(candidates, weights)]
        lowest = min(scores)
        tied = [backend for backend, score in zip(candidates, scores) if score == lowest]
        chosen = tied[self._turn % len(tied)]
        self._turn += 1
        return chosen


class RandomTwo:
    """The power of two choices: two distinct candidates at random, the less loaded wins.

    Nearly as even as least-connections, but many proxies sharing backends do not all
    pile onto the same idle one. ``rng`` is a ``random.Random`` (tests seed one).
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def pick(self, candidates, weights, key=None):
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(range(len(candidates)), 2)
        if _load(candidates[second], weights[second]) < _load(candidates[first], weights[first]):
            first = second
        return candidates[first]


class Rendezvous:
    """Consistent hashing by highest random weight (rendezvous hashing).

    Every candidate scores ``weight / -ln(u)`` where ``u`` is a hash of (backend, key) in
    (0, 1); the highest score wins. Removing a backend moves only the keys it had, spread
    evenly over the rest; adding one takes about 1/n of the keys from the others. A
    request without a key (no such header or cookie) goes round-robin.
    """

    def __init__(self, fallback: Policy | None = None):
        self._fallback = fallback or RoundRobin()

    def pick(self, candidates, weights, key=None):
        if key is None:
            return self._fallback.pick(candidates, weights)
        best, best_score = None, -1.0
        for backend, weight in zip(candidates, weights):
            score = weight / -math.log(_unit_hash(backend.url, key))
            if score > best_score:
                best, best_score = backend, score
        return best


def make_policy(name: str, rng: random.Random | None = None) -> Policy:
    """The policy called ``name`` (one of ``config.POLICIES``)."""
    if name == "least_connections":
        return LeastConnections()
    if name == "random_two":
        return RandomTwo(rng)
    if name == "hash":
        return Rendezvous()
    return RoundRobin()


def _load(backend, weight: float) -> float:
    return (backend.in_flight + 1) / weight


def _unit_hash(name: str, key: str) -> float:
    """A stable number in (0, 1) for the pair, the same in every process and run."""
    digest = hashlib.blake2b(f"{name}\n{key}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2 ** 64 + 2)
