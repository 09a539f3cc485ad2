"""Active health checks: one round at a time, against real backends; no sleeping through intervals."""
import logging

import pytest

from app import create_app
from app.config import parse
from tests.backends import TestBackend, wait_until
from tests.servers import serving


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


def _wrong_path_warnings(caplog):
    return [r for r in caplog.records if "likely the wrong path" in r.getMessage()]


def test_every_backend_failing_its_first_check_with_one_4xx_warns_of_the_path(backends, caplog):
    """APIs often answer 404 on `/`: the whole site would be 503 within `fall` rounds."""
    app = make_app([b.url for b in backends], "  path: /status/404\n")
    with caplog.at_level(logging.WARNING, logger="myproxy.health"):
        app.health.check_once()
        app.health.check_once()
    warned = _wrong_path_warnings(caplog)
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
    message = warned[0].getMessage()
    assert "every backend failed its first health check with status 404" in message
    assert "GET /status/404" in message and "set health_check.path" in message
    assert "route" not in message.split(":")[0]


def test_a_routes_pool_names_the_route_in_the_warning(backend, caplog):
    app = create_app(parse(f"routes:\n  - name: api\n    backends: [{backend.url}]\n"
                           "    health_check: {path: /status/403}\n", environ={}))
    with caplog.at_level(logging.WARNING, logger="myproxy.health"):
        app.runtime.pool("api").health.check_once()
    [warned] = _wrong_path_warnings(caplog)
    assert "set health_check.path of route api" in warned.getMessage()
    assert "status 403" in warned.getMessage()


@pytest.mark.parametrize("path,stop_one", [
    ("/status/404", True),        # one refuses the connection: not the same 4xx from all
    ("/status/503", False),       # a 5xx: the backends are in trouble, not the path
    ("/", False),                 # passing
], ids=["mixed", "5xx", "passing"])
def test_no_path_warning_unless_every_backend_answers_the_same_4xx(backends, caplog, path,
                                                                  stop_one):
    app = make_app([b.url for b in backends], f"  path: {path}\n")
    if stop_one:
        backends[0].stop()
    with caplog.at_level(logging.WARNING, logger="myproxy.health"):
        app.health.check_once()
    assert _wrong_path_warnings(caplog) == []


@pytest.mark.parametrize("kind", ["wsgi.py", "gunicorn"])
def test_the_wrong_path_warning_is_logged_once_by_a_running_proxy(kind, backends, tmp_path_factory):
    config = {"host": "127.0.0.1", "port": 0, "backends": [b.url for b in backends],
              "health_check": {"path": "/status/404", "interval": "200ms", "fall": 2},
              "shutdown_timeout": "2s"}
    with serving(kind, tmp_path_factory, config) as process:
        assert wait_until(lambda: "likely the wrong path" in process.output, timeout=10), \
            process.output
        assert wait_until(lambda: process.output.count("backend down") == 3, timeout=10)
        assert process.output.count("likely the wrong path") == 1
    assert "set health_check.path to a path the backends answer with 200-399" in process.output
