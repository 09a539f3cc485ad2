"""Choosing a backend: plain asserts, no I/O."""
import pytest

from app.balancer import Backend, Balancer, CheckResult
from app.config import BackendConfig, HealthCheckConfig
from app.errors import NoBackendAvailable


def make(*weights):
    return [Backend(BackendConfig(f"http://h:{i}", weight=w)) for i, w in enumerate(weights, 1)]


def names(balancer, count):
    return [balancer.choose().url.rsplit(":", 1)[1] for _ in range(count)]


def test_equal_weights_rotate_in_order():
    assert names(Balancer(make(1, 1, 1)), 7) == ["1", "2", "3", "1", "2", "3", "1"]


def test_weights_are_smooth():
    assert names(Balancer(make(5, 1, 1)), 7) == ["1", "1", "2", "1", "3", "1", "1"]


def test_unhealthy_and_drained_backends_are_skipped():
    backends = make(1, 1, 0)
    backends[0].healthy = False
    assert set(names(Balancer(backends), 4)) == {"2"}


def test_exclude_skips_backends_already_tried():
    backends = make(1, 1)
    balancer = Balancer(backends)
    assert balancer.choose(exclude=[backends[0]]) is backends[1]
    assert balancer.choose(exclude=[backends[0]]) is backends[1]


def test_no_backend_raises_with_reasons():
    backends = make(1, 1)
    for backend in backends:
        backend.record_check(CheckResult(0, False, 0.1, error="connection refused"),
                             HealthCheckConfig(fall=1))
    with pytest.raises(NoBackendAvailable) as caught:
        Balancer(backends).choose()
    assert caught.value.status == 503
    assert "connection refused" in caught.value.detail


def test_fall_and_rise_count_consecutive_checks():
    rules = HealthCheckConfig(rise=2, fall=3)
    backend = make(1)[0]
    fail, ok = CheckResult(0, False, 0, error="boom"), CheckResult(0, True, 0, status=200)
    assert [backend.record_check(r, rules) for r in (fail, fail, ok, fail, fail)] == [None] * 5
    assert backend.healthy
    assert backend.record_check(fail, rules) == "down"
    assert backend.record_check(fail, rules) is None
    assert [backend.record_check(r, rules) for r in (ok, fail, ok)] == [None, None, None]
    assert backend.record_check(ok, rules) == "up"
    assert backend.healthy
