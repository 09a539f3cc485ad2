"""Active health checks: one round at a time, against real backends; no sleeping through intervals."""
from app import create_app
from app.config import parse
from tests.backends import TestBackend


def make_app(urls, health="  rise: 2\n  fall: 2\n"):
    text = "backends:\n" + "".join(f"  - {u}\n" for u in urls) + "health_check:\n  timeout: 500ms\n" + health
    return create_app(parse(text, environ={}))


def test_a_stopped_backend_goes_down_after_fall_rounds_and_returns_after_rise(backends):
    app = make_app([b.url for b in backends])
    checker, victim = app.health, app.balancer.backends[1]
    checker.check_once()
    assert all(b.healthy for b in app.balancer.backends)
    backends[1].stop()
    checker.check_once()
    assert victim.healthy and victim.failures == 1
    checker.check_once()
    assert not victim.healthy
    assert "refused" in victim.last_error
    assert [b.healthy for b in app.balancer.backends] == [True, False, True]
    backends[1].start()
    checker.check_once()
    assert not victim.healthy and victim.passes == 1
    checker.check_once()
    assert victim.healthy


def test_checks_get_the_configured_path_and_judge_the_status(backend):
    app = make_app([backend.url], "  path: /status/503\n  fall: 1\n")
    app.health.check_once()
    assert backend.requests[-1].target == "/status/503"
    assert backend.requests[-1].method == "GET"
    target = app.balancer.backends[0]
    assert not target.healthy and target.last_error == "status 503"


def test_expect_decides_which_statuses_pass(backend):
    app = make_app([backend.url], "  path: /status/404\n  fall: 1\n  expect: 200-499\n")
    app.health.check_once()
    assert app.balancer.backends[0].healthy


def test_a_hanging_backend_fails_by_the_timeout(backend):
    app = make_app([backend.url], "  path: /wait\n  fall: 1\n")
    app.health.check_once()
    target = app.balancer.backends[0]
    assert not target.healthy and "timed out" in target.last_error
    backend.release.set()


def test_checks_keep_a_bounded_history(backend):
    app = make_app([backend.url])
    for _ in range(30):
        app.health.check_once()
    history = app.balancer.backends[0].checks
    assert len(history) == 20 and all(result.ok for result in history)


def test_start_runs_the_first_round_at_once_and_stop_is_idempotent(backend):
    app = make_app([backend.url])
    app.start()
    from tests.backends import wait_until
    assert wait_until(lambda: app.health.rounds >= 1, timeout=5)
    app.stop()
    app.stop()
    assert not app.health.running


def test_nothing_starts_when_the_app_is_built(backend):
    app = make_app([backend.url])
    assert not app.health.running
    assert backend.requests == []


def test_rounds_are_spread_by_jitter(backend):
    app = make_app([backend.url], "  interval: 10s\n")
    delays = [app.health.next_delay() for _ in range(200)]
    assert all(9.0 <= delay <= 11.0 for delay in delays)
    assert min(delays) < 9.5 and max(delays) > 10.5
