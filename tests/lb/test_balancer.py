"""Choosing a backend: plain asserts, no I/O."""
import pytest

from app.lb.balancer import Backend, Balancer, CheckResult
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


# --- backend state: passive ejection, backup, slow start (a fake clock, no sleeping) ---

from app.config import PassiveHealthConfig  # noqa: E402

PASSIVE = PassiveHealthConfig(failures=3, eject_for=10)
RULES = HealthCheckConfig(rise=2, fall=3)
PASS = CheckResult(0, True, 0, status=200)


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def backends_with(clock, *specs, probed=True):
    return [Backend(BackendConfig(f"http://h:{i}", weight=w, backup=backup), clock=clock,
                    probed=probed) for i, (w, backup) in enumerate(specs, 1)]


def test_consecutive_failed_requests_eject_at_once():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False))
    balancer = Balancer([a, b], clock=clock)
    assert [balancer.record_request(a, "reset", PASSIVE) for _ in range(2)] == [None, None]
    assert balancer.record_request(a, None, PASSIVE) is None        # a success starts over
    assert [balancer.record_request(a, "timeout", PASSIVE) for _ in range(3)] == [None, None, "ejected"]
    assert a.state == "ejected" and not a.available
    assert a.ejected_until == clock.now + 10
    assert {balancer.choose().url for _ in range(4)} == {b.url}


def test_an_ejected_backend_returns_on_a_passing_check_after_eject_for():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False))
    balancer = Balancer([a, b], clock=clock)
    for _ in range(3):
        balancer.record_request(a, "reset", PASSIVE)
    clock.now += 9
    assert a.record_check(PASS, RULES) is None and a.state == "ejected"
    clock.now += 1
    assert a.record_check(CheckResult(0, False, 0, error="timed out"), RULES) is None
    assert a.state == "ejected"
    assert a.record_check(PASS, RULES) == "up"
    assert a.available and a.request_failures == 0


def test_without_active_checks_an_ejected_backend_is_on_trial_after_eject_for():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False), probed=False)
    balancer = Balancer([a, b], clock=clock)
    for _ in range(3):
        balancer.record_request(a, "refused", PASSIVE)
    assert not a.available
    clock.now += 10
    assert a.available and a.state == "ejected"                     # on trial
    assert balancer.record_request(a, "refused", PASSIVE) == "ejected"  # one failure is enough
    assert not a.available and a.ejected_until == clock.now + 10
    clock.now += 10
    assert balancer.record_request(a, None, PASSIVE) == "up"
    assert a.state == "up"


def test_the_last_available_backend_is_never_ejected():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False))
    balancer = Balancer([a, b], clock=clock)
    b.healthy = False
    for _ in range(5):
        assert balancer.record_request(a, "refused", PASSIVE) is None
    assert a.available and a.request_failures == 5


def test_passive_health_off_never_ejects():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False))
    balancer = Balancer([a, b], clock=clock)
    for _ in range(10):
        balancer.record_request(a, "reset", PassiveHealthConfig(failures=0))
    assert a.state == "up"


def test_backups_serve_only_while_no_primary_can():
    clock = Clock()
    a, b, spare = backends_with(clock, (1, False), (1, False), (1, True))
    balancer = Balancer([a, b, spare], clock=clock)
    assert {balancer.choose().url for _ in range(6)} == {a.url, b.url}
    assert balancer.choose(exclude=[a, b]) is spare                 # a retry after both failed
    a.healthy = False
    for _ in range(3):
        balancer.record_request(b, "reset", PASSIVE)
    assert b.state == "ejected"
    assert {balancer.choose().url for _ in range(3)} == {spare.url}


def test_ejection_is_named_when_nothing_is_available():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False))
    balancer = Balancer([a, b], clock=clock)
    for _ in range(3):
        balancer.record_request(a, "connect: connection refused", PASSIVE)
    b.record_check(CheckResult(0, False, 0, error="timed out"), HealthCheckConfig(fall=1))
    with pytest.raises(NoBackendAvailable) as caught:
        balancer.choose()
    assert caught.value.detail == (f"{a.url} ejected after failed requests: "
                                   f"connect: connection refused; {b.url} down: timed out")


def test_slow_start_ramps_a_recovered_backends_share_linearly():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False))
    balancer = Balancer([a, b], slow_start=10, clock=clock)
    fall = HealthCheckConfig(fall=1, rise=1)
    a.record_check(CheckResult(0, False, 0, error="x"), fall)
    assert a.record_check(PASS, fall) == "up"
    shares = []
    for elapsed in (0, 2.5, 5, 10):
        clock.now = a.recovered_at + elapsed
        shares.append(sum(balancer.choose() is a for _ in range(600)))
    # weights 0.05, 0.25, 0.5 and 1 against b's 1
    assert shares == [29, 120, 200, 300]


def test_slow_start_does_not_apply_at_start_up():
    clock = Clock()
    balancer = Balancer(backends_with(clock, (1, False), (1, False)), slow_start=60, clock=clock)
    assert names(balancer, 4) == ["1", "2", "1", "2"]


def test_a_backend_that_rises_while_ejected_waits_out_its_ejection():
    clock = Clock()
    a, b = backends_with(clock, (1, False), (1, False))
    balancer = Balancer([a, b], clock=clock)
    for _ in range(3):
        balancer.record_request(a, "refused", PASSIVE)
    fail = CheckResult(0, False, 0, error="refused")
    assert [a.record_check(fail, RULES) for _ in range(3)] == [None, None, "down"]
    clock.now += 2
    assert [a.record_check(PASS, RULES) for _ in range(2)] == [None, "ejected"]
    assert a.ejection_left == 8 and not a.available
    clock.now += 8
    assert a.record_check(PASS, RULES) == "up"


def test_admin_states_take_a_backend_out_of_balancing_but_drain_keeps_it_serving():
    first, second = backends = make(1, 1)
    balancer = Balancer(backends)
    first.admin_state = "drain"
    assert set(names(balancer, 4)) == {"2"}
    assert first.serving and not first.available
    first.admin_state = "maint"
    assert not first.available
    first.admin_state = "ready"
    assert set(names(balancer, 4)) == {"1", "2"}


def test_a_weight_set_at_run_time_replaces_the_configured_one_until_cleared():
    first, second = backends = make(1, 1)
    balancer = Balancer(backends)
    first.admin_weight = 3
    assert names(balancer, 8).count("1") == 6
    first.admin_weight = 0
    assert set(names(balancer, 4)) == {"2"}
    first.admin_weight = None
    assert names(balancer, 8).count("1") == 4
