"""``python wsgi.py --check [--probe]``: errors located and explained, settings shown, backends probed."""
import re
import sys

import pytest

from app.config import SCALARS, SECTIONS
from tests.backends import free_port
from tests.conftest import ProxyProcess, base_config

OK_BACKENDS = "backends:\n  - http://127.0.0.1:5001\n"


def check(path, *args, env=None) -> ProxyProcess:
    process = ProxyProcess([sys.executable, "wsgi.py", "--check", "--config", path, *args], env=env)
    process.wait(timeout=15)
    return process


@pytest.mark.parametrize("text,where", [
    (OK_BACKENDS + "health_check:\n  path: /\n  intervall: 5s\n",
     ":5:3: health_check.intervall: unknown key (did you mean `interval`?)"),
    (OK_BACKENDS + "  - url: http://127.0.0.1:5002\n    wieght: 2\n",
     ":4:5: backends[1].wieght: unknown key (did you mean `weight`?)"),
    ("polcy: round_robin\n" + OK_BACKENDS, ":1:1: polcy: unknown key (did you mean `policy`?)"),
    (OK_BACKENDS + "timeouts:\n  read: soon\n", ":4:9: timeouts.read: 'soon' is not a duration"),
    (OK_BACKENDS + "retries: {attempts: 0}\n", ":3:21: retries.attempts: must be at least 1"),
    (OK_BACKENDS + "port: ${NOT_SET_ANYWHERE}\n",
     ":3:7: port: environment variable NOT_SET_ANYWHERE is not set"),
    (OK_BACKENDS + "health_check: {path: /\n", ":4:1: invalid YAML"),
    (OK_BACKENDS + "routes:\n  - name: api\n    path: /api/*\n    backends: [http://h:1]\n",
     ":5:11: routes[0].path: '/api/*': a route's path is a prefix, not a pattern, and takes no "
     "`*`; write `path: /api/`"),
    (OK_BACKENDS + "timeouts:\n  read: 0\n",
     ":4:9: timeouts.read: must be more than 0 (0 is not 'no limit'"),
], ids=["nested-key", "backend-key", "top-level-key", "bad-duration", "below-minimum",
        "unset-variable", "bad-yaml", "route-path-wildcard", "zero-timeout"])
def test_check_errors_give_file_line_column_key_and_suggestion(write_config, text, where):
    path = write_config(text)
    process = check(path)
    assert process.proc.returncode == 1
    assert f"myproxy: config error: {path}{where}" in process.output
    assert "Traceback" not in process.output and "config OK" not in process.output


def test_check_aligns_every_setting_and_shows_values_as_written(write_config):
    path = write_config({"backends": ["http://127.0.0.1:5001",
                                      {"url": "http://127.0.0.1:5002", "weight": 3, "backup": True}],
                         "health_check": {"interval": "500ms", "timeout": "200ms"}, "limits": {"max_body_bytes": "1MiB"}})
    process = check(path)
    assert process.proc.returncode == 0
    lines = process.output.splitlines()
    assert lines[0] == f"config OK: {path}"
    settings, budget, hint = lines[1:-2], lines[-2], lines[-1]
    assert hint == ("probe: not run; add --probe to send one health check (GET /) to each "
                    "backend: a wrong health_check.path would take every backend down")
    assert budget.startswith("shutdown: SIGTERM to exit takes up to 26s")
    assert len(settings) == len(SCALARS) + 2 + sum(len(keys) for _, keys in SECTIONS.values())
    assert len({line.rindex(" (") for line in settings}) == 1      # one column of origins
    assert len({re.search(r"^  \S+\s+", line).end() for line in settings}) == 1   # one of values
    shown = {line.split()[0]: line.split()[1:] for line in settings}
    assert shown["backends[1]"] == ["http://127.0.0.1:5002", "weight=3", "backup", "(file)"]
    assert shown["health_check.interval"] == ["500ms", "(file)"]
    assert shown["limits.max_body_bytes"] == ["1MiB", "(file)"]
    assert shown["timeouts.read"] == ["30s", "(default)"]
    assert shown["health_check.expect"] == ["200-399", "(default)"]
    assert shown["shutdown_delay"] == ["0s", "(default)"]


def test_check_shows_what_came_from_the_environment(write_config):
    path = write_config("host: ${BIND_HOST:-127.0.0.1}\nbackends:\n  - http://${BACKEND_HOST}:5001\n")
    process = check(path, env={"PORT": "9999", "BACKEND_HOST": "10.0.0.7",
                               "MYPROXY_ADMIN_TOKEN": "s3cret"})
    assert process.proc.returncode == 0
    shown = {line.split()[0]: line for line in process.output.splitlines()[1:]}
    assert shown["port"].split()[1:] == ["9999", "(env", "PORT)"]
    assert "http://10.0.0.7:5001" in shown["backends[0]"] and "(file, env BACKEND_HOST)" in shown["backends[0]"]
    assert "127.0.0.1" in shown["host"] and "(file, default of ${BIND_HOST})" in shown["host"]
    assert "(set)" in shown["admin.token"] and "(env MYPROXY_ADMIN_TOKEN)" in shown["admin.token"]
    assert "s3cret" not in process.output
    process = check(path, env={"BACKEND_HOST": "h", "MYPROXY_BACKENDS": "http://x:1,http://y:2"})
    assert "http://y:2 weight=1  (env MYPROXY_BACKENDS)" in process.output


def test_probe_reports_each_backend_and_fails_on_a_down_one(write_config, backend):
    down = f"http://127.0.0.1:{free_port()}"
    path = write_config(base_config([backend.url, down], health_check={"path": "/probe-me"}))
    process = check(path, "--probe")
    assert process.proc.returncode == 1
    assert backend.requests[-1].target == "/probe-me"
    assert re.search(rf"  {re.escape(backend.url)} +up +status 200 \(\d+ms\)", process.output)
    assert re.search(rf"  {re.escape(down)} +DOWN +connection failed: connection refused",
                     process.output)
    assert "probe: 1 of 2 backend(s) up" in process.output


def test_probe_passes_when_every_backend_answers(write_config, backends):
    path = write_config(base_config([b.url for b in backends], health_check={"path": "/status/204"}))
    process = check(path, "--probe")
    assert process.proc.returncode == 0, process.output
    assert "probe: 3 of 3 backend(s) up" in process.output
    assert all(b.requests[-1].target == "/status/204" for b in backends)


def test_probe_counts_an_unexpected_status_as_down(write_config, backend):
    path = write_config(base_config([backend.url], health_check={"path": "/status/500"}))
    process = check(path, "--probe")
    assert process.proc.returncode == 1
    assert "DOWN  status 500 (not in health_check.expect)" in process.output


def test_probe_reports_a_4xx_from_the_health_path_as_a_likely_wrong_path(write_config, backends):
    path = write_config(base_config([backends[0].url], health_check={"path": "/status/404"},
                                    routes=[{"name": "api", "backends": [backends[1].url],
                                             "health_check": {"path": "/status/401"}}]))
    process = check(path, "--probe")
    assert process.proc.returncode == 1
    assert ("DOWN  status 404 (not in health_check.expect: GET /status/404 is likely the wrong "
            "path; set health_check.path)") in process.output
    assert ("DOWN  status 401 (not in health_check.expect: GET /status/401 is likely the wrong "
            "path; set health_check.path of route api)") in process.output


@pytest.mark.parametrize("delay,timeout,docker,kubernetes", [
    ("0s", "25s", "needs more", "fits"),
    ("5s", "20s", "needs more", "fits"),
    ("2s", "5s", "fits", "fits"),
    ("10s", "25s", "needs more", "needs more"),
    ("0s", "10s", "fits", "fits"),
    ("5s", "25s", "needs more", "fits"),
], ids=["defaults", "kubernetes-example", "short", "too-long", "docker-exactly", "paas-exactly"])
def test_check_weighs_delay_and_timeout_against_each_platforms_wait(write_config, delay, timeout,
                                                                   docker, kubernetes):
    path = write_config({"backends": ["http://127.0.0.1:5001"], "shutdown_delay": delay,
                         "shutdown_timeout": timeout})
    budget = check(path).output.splitlines()[-2]
    assert f"docker stop 10s: {docker}" in budget
    assert f"Kubernetes 30s: {kubernetes}" in budget and f"a PaaS 30s: {kubernetes}" in budget


def test_a_shutdown_longer_than_kubernetes_and_a_paas_wait_is_warned_at_start(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], shutdown_delay="10s", shutdown_timeout="25s"))
    line = proxy.wait_for(r"WARNING.*shutdown_delay \+ shutdown_timeout \(35s\).*").group(0)
    assert "30s Kubernetes and a PaaS wait" in line


ROUTED = """\
policy: least_connections
routes:
  - name: any-api
    path: /api
    backends: [http://127.0.0.1:5003]
  - name: site
    host: ["*.example.com", www.example.com]
    backends: [http://127.0.0.1:5002]
  - name: api
    host: api.example.com
    path: /api
    strip_prefix: true
    backends: [http://127.0.0.1:5001]
    retries: {attempts: 3}
  - name: hidden
    path: /_myproxy/stats
    backends: [http://127.0.0.1:5004]
backends: [http://127.0.0.1:5000]
"""


def test_check_prints_the_route_table_in_precedence_order_with_each_routes_settings(write_config):
    process = check(write_config(ROUTED))
    assert process.proc.returncode == 0, process.output
    table = process.output.split("first match wins):\n", 1)[1].split("\nroute ", 1)[0].splitlines()
    assert [line.split()[1:4:2] for line in table] == [
        ["api", "api.example.com"], ["site", "www.example.com"], ["site", "*.example.com"],
        ["hidden", "*"], ["any-api", "*"], ["default", "*"]]
    assert re.search(r"path /api +-> http://127.0.0.1:5001 \(strip_prefix\)$", table[0])
    api = process.output.split("route api (routes[2], line 9):\n", 1)[1].split("\nroute ", 1)[0]
    shown = {line.split()[0]: line.split()[1:] for line in api.splitlines()}
    assert shown["retries.attempts"] == ["3", "(routes[2],", "file)"]
    assert shown["policy"] == ["least_connections", "(top", "level,", "file)"]
    assert shown["timeouts.read"] == ["30s", "(default)"] and "timeouts.client_idle" not in shown
    assert ("warning: route hidden (line 15) can never match: its path /_myproxy/stats is under "
            "admin.prefix /_myproxy") in process.output


def test_check_warns_that_a_catch_all_route_leaves_the_default_pool_unused(write_config):
    text = ROUTED + "  - name: everything\n    backends: [http://127.0.0.1:5005]\n"
    text = text.replace("backends: [http://127.0.0.1:5000]\n", "") + "backends: [http://127.0.0.1:5000]\n"
    process = check(write_config(text))
    assert process.proc.returncode == 0
    assert "the top-level backends (route default) can never match: route everything" in process.output


def test_probe_checks_each_routes_backends_with_its_own_rules(write_config, backends):
    a, b, _ = backends
    config = base_config([a.url], health_check={"path": "/top"})
    config["routes"] = [{"name": "api", "path": "/api", "backends": [b.url, a.url],
                         "health_check": {"path": "/status/204"}}]
    process = check(write_config(config), "--probe")
    assert process.proc.returncode == 0, process.output
    assert "probe: GET /status/204 on each backend of route api" in process.output
    assert "probe: 3 of 3 backend(s) up" in process.output
    assert sorted(r.target for r in a.requests) == ["/status/204", "/top"]


def test_check_says_where_an_unset_health_check_timeout_came_from(write_config):
    process = check(write_config(OK_BACKENDS + "health_check: {interval: 500ms}\n"))
    assert process.proc.returncode == 0, process.output
    line = next(line for line in process.output.splitlines()
                if line.split()[0] == "health_check.timeout")
    assert line.split()[1] == "500ms" and line.endswith("(default, capped at health_check.interval)")
