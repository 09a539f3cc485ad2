"""GCRA and its table of keys (app.lb.ratelimit), with the clock handed in."""
import os
import subprocess
import sys

import pytest

from app.lb.ratelimit import PROBE, RateLimit, RateTable, open_table, retry_after


def limit(rate, burst, table=None, name="default\0client_ip"):
    return RateLimit(name, rate, burst, table or RateTable(slots=1024))


def flood(limit, seconds, step=0.0005, key="k"):
    """A client asking every ``step`` seconds for ``seconds``: how many were admitted."""
    admitted, now = 0, 1000.0
    for _ in range(int(seconds / step)):
        admitted += limit.check(key, now) == 0
        now += step
    return admitted


@pytest.mark.parametrize("rate, burst, seconds", [(50, 10, 10), (20, 5, 3), (1, 0, 5), (1000, 0, 1)])
def test_a_flood_gets_burst_plus_rate_times_time(rate, burst, seconds):
    assert flood(limit(rate, burst), seconds) == burst + rate * seconds


def test_a_quiet_key_may_send_burst_plus_one_at_once_then_waits_one_interval():
    rated = limit(10, 4)
    assert [rated.check("k", 5.0) for _ in range(5)] == [0.0] * 5
    wait = rated.check("k", 5.0)
    assert wait == pytest.approx(0.1)
    assert rated.check("k", 5.0 + wait) == 0.0       # exactly when it was told
    assert rated.check("k", 5.0 + wait) > 0


def test_a_refused_request_is_not_counted():
    rated = limit(1, 0)
    assert rated.check("k", 0.0) == 0.0
    for _ in range(100):
        assert rated.check("k", 0.5) == pytest.approx(0.5)
    assert rated.check("k", 1.0) == 0.0


def test_keys_and_pools_are_counted_apart_in_one_table():
    table = RateTable(slots=1024)
    api = limit(1, 0, table, "api\0client_ip")
    web = limit(1, 0, table, "web\0client_ip")
    assert api.check("10.0.0.1", 0.0) == 0.0
    assert api.check("10.0.0.1", 0.0) > 0
    assert api.check("10.0.0.2", 0.0) == 0.0
    assert web.check("10.0.0.1", 0.0) == 0.0


def test_retry_after_is_whole_seconds_and_at_least_one():
    assert [retry_after(w) for w in (0.001, 0.999, 1.0, 1.01, 59.5)] == [1, 1, 1, 2, 60]


def test_a_full_window_gives_up_the_key_used_longest_ago():
    table = RateTable(slots=1)            # every key has the one window of PROBE slots
    hourly = limit(1 / 3600, 0, table)
    keys = [f"k{i}" for i in range(PROBE + 1)]
    for at, key in enumerate(keys[:PROBE]):
        assert hourly.check(key, float(at)) == 0.0
    assert hourly.check(keys[PROBE], float(PROBE)) == 0.0    # takes k0's slot
    assert hourly.check("k0", PROBE + 1.0) == 0.0            # k0 starts afresh
    assert all(hourly.check(key, PROBE + 2.0) > 0 for key in keys[2:])   # the others are held


def test_a_key_whose_state_has_run_out_frees_its_slot_first():
    table = RateTable(slots=1)
    rated = limit(100, 0, table)
    for i in range(PROBE):
        assert rated.check(f"old{i}", 0.0) == 0.0      # all done by 0.01
    hourly = limit(1 / 3600, 0, table, "other\0route")
    assert hourly.check("", 1.0) == 0.0
    # old0's slot went, with nothing lost; the newer, still-limited entry stays.
    assert hourly.check("", 2.0) > 0


def test_the_table_stays_its_size_whatever_the_number_of_keys(tmp_path):
    path = str(tmp_path / "t")
    table = RateTable(path, slots=256)
    size = os.path.getsize(path)
    rated = limit(1, 5, table)
    for i in range(20_000):
        rated.check(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", i * 0.001)
    assert os.path.getsize(path) == size == table.size


def test_a_lowered_limit_or_a_clock_that_went_back_holds_a_key_one_interval_at_most():
    table = RateTable(slots=64)
    assert limit(1 / 3600, 1000, table).check("k", 0.0) == 0.0   # tat one hour on
    assert limit(1, 0, table).check("k", 0.0) == pytest.approx(1.0)


def test_two_mappings_of_one_file_share_every_key(tmp_path):
    path = str(tmp_path / "t")
    first, second = limit(1, 1, RateTable(path)), limit(1, 1, RateTable(path))
    assert first.check("k", 10.0) == 0.0
    assert second.check("k", 10.0) == 0.0
    assert first.check("k", 10.0) > 0 and second.check("k", 10.0) > 0


CHILD = """
import sys
from app.lb.ratelimit import RateLimit, open_table
rated = RateLimit("p", 1, 0, open_table(sys.argv[1]))
print(sum(rated.check("k", 50.0) == 0 for _ in range(int(sys.argv[2]))))
"""


def test_processes_mapping_the_group_table_share_one_limit_after_one_is_gone(tmp_path):
    """A process that counted and exited (a dead worker) leaves its count in the file."""
    def child(count):
        done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(count)],
                              capture_output=True, text=True, timeout=30,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert done.returncode == 0, done.stderr
        return int(done.stdout)
    assert child(1) == 1
    assert child(3) == 0               # the same second: the first process's count holds
    rated = RateLimit("p", 1, 0, open_table(str(tmp_path)))
    assert rated.check("k", 51.0) == 0.0


# -- the config's rate_limit ----------------------------------------------------------------

from app.config import ConfigError, parse  # noqa: E402

TOP = "backends: [http://127.0.0.1:9]\n"


@pytest.mark.parametrize("text, rate", [("100/s", 100.0), ("6000/m", 100.0), ("1000/h", 1000 / 3600),
                                        ("2.5/s", 2.5), ("0", 0.0)],
                         ids=["per-second", "per-minute", "per-hour", "fraction", "off"])
def test_a_rate_is_requests_per_unit(text, rate):
    assert parse(TOP + f"rate_limit: {{rate: '{text}'}}\n").rate_limit.rate == pytest.approx(rate)


@pytest.mark.parametrize("line, message", [
    ("rate: 50/x", "'50/x' is not a rate"),
    ("rate: 50", "50 is not a rate"),
    ("burst: -1", "rate_limit.burst: must be at least 0"),
    ("key: cookie:session", "expected client_ip, header:NAME or route"),
    ("keys: route", "rate_limit.keys: unknown key (did you mean `key`?)"),
], ids=["unit", "no-unit", "negative-burst", "key-kind", "unknown-key"])
def test_a_bad_rate_limit_is_refused_with_its_file_and_line(line, message):
    with pytest.raises(ConfigError) as refused:
        parse(TOP + "port: 8080\nrate_limit:\n  " + line + "\n", "conf.yaml")
    assert str(refused.value).startswith("conf.yaml:4:") and message in str(refused.value)


def test_a_routes_rate_limit_replaces_the_top_levels_key_by_key():
    config = parse(TOP + "rate_limit: {rate: 10/s, burst: 3, key: route}\nroutes:\n"
                   "  - {name: api, path: /api, backends: [http://127.0.0.1:9], "
                   "rate_limit: {rate: 1/s}}\n"
                   "  - {name: open, path: /open, backends: [http://127.0.0.1:9], "
                   "rate_limit: {rate: 0}}\n")
    limits = {pool.name: pool.rate_limit for pool in config.pools}
    assert (limits["api"].rate, limits["api"].burst, limits["api"].key) == (1.0, 3, "route")
    assert limits["open"].rate == 0 and limits["default"].rate == 10.0


def test_a_key_refused_again_and_again_is_in_use_and_not_the_one_given_up():
    table = RateTable(slots=1)
    hourly = limit(1 / 3600, 0, table)
    assert hourly.check("busy", 0.0) == 0.0
    for at in range(1, PROBE):
        assert hourly.check(f"k{at}", float(at)) == 0.0
    assert hourly.check("busy", 100.0) > 0                 # refused, but asking
    assert hourly.check("new", 101.0) == 0.0               # takes k1's slot, not busy's
    assert hourly.check("busy", 102.0) > 0
    assert hourly.check("k1", 103.0) == 0.0


def test_slots_left_by_a_clock_before_a_reboot_are_free(tmp_path):
    """A group directory kept across a reboot: CLOCK_MONOTONIC started again near 0."""
    path = str(tmp_path / "t")
    before = limit(1 / 3600, 0, RateTable(path, slots=1))
    for i in range(PROBE):
        assert before.check(f"old{i}", 1e6 + i) == 0.0
    after = limit(1 / 3600, 0, RateTable(path, slots=1))
    assert [after.check(f"new{i}", 10.0 + i) for i in range(PROBE)] == [0.0] * PROBE
    assert all(after.check(f"new{i}", 20.0) > 0 for i in range(PROBE))    # each one held
