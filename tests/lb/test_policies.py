"""Selection policies: exact sequences and shares, plain asserts, no I/O."""
import collections
import random

import pytest

from app.lb.policies import LeastConnections, Rendezvous, RandomTwo, RoundRobin, make_policy


class B:
    """The two things a policy reads from a backend."""

    def __init__(self, url, in_flight=0):
        self.url = url
        self.in_flight = in_flight

    def __repr__(self):
        return self.url


def pool(count):
    return [B(name) for name in "abcdefgh"[:count]]


def picks(policy, backends, weights, count, key=None):
    return "".join(policy.pick(backends, weights, key).url for _ in range(count))


@pytest.mark.parametrize("weights,sequence", [
    ((1, 1, 1), "abcabcabc"),
    ((2, 1), "abaaba"),
    ((5, 1, 1), "aabacaaaabacaa"),
    ((3, 2), "ababa" * 2),
    ((1, 2, 3), "cbacbc" * 2),
], ids=["equal", "2-1", "5-1-1", "3-2", "1-2-3"])
def test_round_robin_exact_sequences(weights, sequence):
    assert picks(RoundRobin(), pool(len(weights)), weights, len(sequence)) == sequence


def test_round_robin_with_fractional_weights_keeps_exact_shares():
    counts = collections.Counter(picks(RoundRobin(), pool(2), (0.25, 1.0), 500))
    assert counts == {"a": 100, "b": 400}


def test_least_connections_goes_to_the_fewest_in_flight():
    a, b, c = B("a", 3), B("b", 0), B("c", 1)
    assert picks(LeastConnections(), [a, b, c], (1, 1, 1), 4) == "bbbb"


def test_least_connections_ties_take_turns():
    assert picks(LeastConnections(), pool(3), (1, 1, 1), 6) == "abcabc"


def test_least_connections_is_weighted():
    # (in_flight + 1) / weight: a = 3/3 = 1, b = 2/1 = 2, c = 1/1 = 1 -> a and c tie.
    a, b, c = B("a", 2), B("b", 1), B("c", 0)
    assert picks(LeastConnections(), [a, b, c], (3, 1, 1), 4) == "acac"


def test_least_connections_under_uneven_load_starves_the_slow_backend():
    """Three requests arrive per tick; a and b answer in 1 tick, c takes 6."""
    backends = pool(3)
    service = {"a": 1, "b": 1, "c": 6}
    policy, finishing, counts = LeastConnections(), [], collections.Counter()
    for tick in range(300):
        for done in [f for f in finishing if f[0] == tick]:
            done[1].in_flight -= 1
            finishing.remove(done)
        for _ in range(3):
            chosen = policy.pick(backends, (1, 1, 1))
            chosen.in_flight += 1
            counts[chosen.url] += 1
            finishing.append((tick + service[chosen.url], chosen))
    assert counts["c"] < counts["a"] / 3 and counts["c"] < counts["b"] / 3
    assert abs(counts["a"] - counts["b"]) <= 0.1 * counts["a"]


def test_random_two_never_picks_the_most_loaded_of_three():
    a, b, c = B("a", 10), B("b", 0), B("c", 0)
    counts = collections.Counter(picks(RandomTwo(random.Random(1)), [a, b, c], (1, 1, 1), 300))
    assert counts["a"] == 0 and counts["b"] > 100 and counts["c"] > 100


def test_random_two_spreads_an_idle_pool_evenly():
    counts = collections.Counter(picks(RandomTwo(random.Random(7)), pool(3), (1, 1, 1), 3000))
    assert all(800 < counts[name] < 1200 for name in "abc"), counts


def test_random_two_with_one_candidate_returns_it():
    assert picks(RandomTwo(random.Random(0)), pool(1), (1,), 3) == "aaa"


KEYS = [f"10.0.{i // 250}.{i % 250}" for i in range(3000)]


def homes(backends, weights=None):
    policy = Rendezvous()
    weights = weights or [1] * len(backends)
    return {key: policy.pick(backends, weights, key).url for key in KEYS}


def test_hash_sends_a_key_to_the_same_backend_every_time():
    backends = pool(3)
    assert homes(backends) == homes(list(reversed(backends)))


def test_hash_spreads_keys_evenly():
    counts = collections.Counter(homes(pool(4)).values())
    assert all(0.21 < counts[name] / len(KEYS) < 0.29 for name in "abcd"), counts


def test_hash_removing_a_backend_moves_only_its_keys_spread_over_the_rest():
    backends = pool(4)
    before = homes(backends)
    after = homes([b for b in backends if b.url != "b"])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == "b"}
    spread = collections.Counter(after[key] for key in moved)
    assert all(0.25 < spread[name] / len(moved) < 0.42 for name in "acd"), spread


def test_hash_adding_a_backend_moves_about_one_in_n_keys_all_to_it():
    before = homes(pool(4))
    after = homes(pool(5))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert 0.16 < len(moved) / len(KEYS) < 0.24
    assert {after[key] for key in moved} == {"e"}


def test_hash_is_weighted():
    counts = collections.Counter(homes(pool(2), [2, 1]).values())
    assert 0.62 < counts["a"] / len(KEYS) < 0.72, counts


def test_hash_without_a_key_goes_round_robin():
    assert picks(Rendezvous(), pool(3), (1, 1, 1), 6, key=None) == "abcabc"


@pytest.mark.parametrize("name,kind", [
    ("round_robin", RoundRobin), ("least_connections", LeastConnections),
    ("random_two", RandomTwo), ("hash", Rendezvous),
])
def test_each_policy_name_has_a_policy(name, kind):
    assert isinstance(make_policy(name), kind)
