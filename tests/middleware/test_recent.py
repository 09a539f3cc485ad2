"""The recent-traffic window behind /status: percentiles, rates and series, on a clock we move."""
import pytest

from app.middleware.recent import RATE_WINDOW, SAMPLES_PER_SECOND, WINDOW, Traffic, percentile


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.mark.parametrize("p,expected", [(50, 50), (95, 95), (99, 99), (100, 100), (1, 1)])
def test_percentile_is_nearest_rank(p, expected):
    assert percentile([(float(v), 1.0) for v in range(1, 101)], p) == expected


def test_percentile_of_nothing_is_none():
    assert percentile([], 50) is None


def test_percentile_weighs_samples():
    # 1 stands for 90 requests, 100 for 10: the median is 1, the 95th percentile is 100.
    samples = [(1.0, 90.0), (100.0, 10.0)]
    assert (percentile(samples, 50), percentile(samples, 95)) == (1.0, 100.0)


def test_window_latencies_and_counts_by_class():
    clock = Clock()
    traffic = Traffic(clock)
    for ms in range(1, 101):
        traffic.record(200 if ms <= 90 else 502, ms / 1000)
    snapshot = traffic.snapshot()
    assert snapshot["requests"] == 100 and snapshot["errors"] == 10
    assert snapshot["responses"] == {"1xx": 0, "2xx": 90, "3xx": 0, "4xx": 0, "5xx": 10}
    assert snapshot["upstream_errors"] == {}
    window = snapshot["window"]
    assert window["latency_ms"] == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert (window["requests"], window["errors"], window["error_rate"]) == (100, 10, 0.1)


def test_rate_counts_the_last_complete_seconds():
    clock = Clock()
    traffic = Traffic(clock)
    for _ in range(RATE_WINDOW):
        for _ in range(5):
            traffic.record(200, 0.001)
        clock.now += 1
    assert traffic.snapshot()["window"]["rate"] == 5.0
    for _ in range(7):                       # the second in progress does not count yet
        traffic.record(200, 0.001)
    assert traffic.snapshot()["window"]["rate"] == 5.0


def test_old_seconds_leave_the_window_but_not_the_totals():
    clock = Clock()
    traffic = Traffic(clock)
    traffic.record(500, 0.5)
    clock.now += WINDOW
    traffic.record(200, 0.002)
    snapshot = traffic.snapshot()
    assert snapshot["requests"] == 2 and snapshot["errors"] == 1
    assert snapshot["window"]["requests"] == 1 and snapshot["window"]["errors"] == 0
    assert snapshot["window"]["latency_ms"]["p99"] == 2.0


def test_series_has_one_point_per_second_of_the_window():
    clock = Clock()
    traffic = Traffic(clock)
    traffic.record(200, 0.010)
    clock.now += 2
    traffic.record(503, 0.020)
    traffic.record(200, 0.030)
    series = traffic.snapshot()["series"]
    assert len(series) == WINDOW and series[-1]["t"] == int(clock.now)
    assert series[-3] == {"t": int(clock.now) - 2, "requests": 1, "errors": 0, "p95_ms": 10.0}
    assert series[-2]["requests"] == 0 and series[-2]["p95_ms"] is None
    assert series[-1] == {"t": int(clock.now), "requests": 2, "errors": 1, "p95_ms": 30.0}


def test_a_busy_second_keeps_a_bounded_sample_but_its_true_count():
    clock = Clock()
    traffic = Traffic(clock)
    for _ in range(SAMPLES_PER_SECOND * 10):
        traffic.record(200, 0.001)
    assert all(len(slot.samples) <= SAMPLES_PER_SECOND for slot in traffic._slots)
    snapshot = traffic.snapshot()
    assert snapshot["window"]["requests"] == SAMPLES_PER_SECOND * 10
    assert snapshot["window"]["latency_ms"]["p50"] == 1.0


def test_failed_attempts_count_as_errors_in_the_window():
    traffic = Traffic(Clock())
    traffic.record(200, 0.001)
    traffic.upstream_error("connect")            # failed, retried elsewhere
    traffic.record(200, 0.001)
    traffic.upstream_error("reset", answered=True)   # the body broke off
    snapshot = traffic.snapshot()
    assert (snapshot["requests"], snapshot["errors"]) == (2, 0)     # answers, 5xx answers
    assert snapshot["upstream_errors"] == {"connect": 1, "reset": 1}
    window = snapshot["window"]
    assert (window["requests"], window["errors"], window["error_rate"]) == (3, 2, round(2 / 3, 4))
