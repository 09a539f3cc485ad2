"""``App.reload``: a new config applied to a running app, in-process, against real backends."""
import logging

from webtest import TestApp

from app import create_app
from app.config import load, parse
from app.reload import changes, fixed_at_start
from tests.backends import wait_until


QUICK_CHECKS = "  timeout: 300ms\n  rise: 1\n  fall: 1\n"


def config_text(urls, extra="", health=QUICK_CHECKS):
    lines = ["backends:"]
    for url in urls:
        lines.append(f"  - {url}" if isinstance(url, str) else
                     f"  - {{url: {url[0]}, weight: {url[1]}}}")
    return "\n".join(lines) + "\nhealth_check:\n" + health + extra


def make_app(urls, extra="", health=QUICK_CHECKS):
    return create_app(parse(config_text(urls, extra, health), "c.yaml", environ={}))


def reload(app, urls, extra="", health=QUICK_CHECKS):
    return app.reload(parse(config_text(urls, extra, health), "c.yaml", environ={}))


def test_a_backend_that_stays_keeps_its_health_state_and_counters(backends):
    a, b, c = backends
    app = make_app([a.url, b.url, c.url])
    client = TestApp(app, lint=False)
    for _ in range(3):
        client.get("/")
    b.stop()
    app.health.check_once()
    kept = app.balancer.find(b.url)
    assert not kept.healthy and kept.requests == 1
    changed = reload(app, [a.url, (b.url, 2), "http://127.0.0.1:9"])
    assert app.balancer.find(b.url) is kept
    assert not kept.healthy and kept.requests == 1 and len(kept.checks) == 1
    assert kept.weight == 2
    assert app.balancer.find(c.url) is None
    added = app.balancer.find("http://127.0.0.1:9")
    assert added.healthy and added.requests == 0
    assert changed == ["+backend http://127.0.0.1:9", f"-backend {c.url}", f"{b.url} weight 1->2"]


def test_traffic_follows_the_new_list_from_the_next_request(backends):
    a, b, c = backends
    app = make_app([a.url, b.url])
    client = TestApp(app, lint=False)
    assert [client.get("/").text for _ in range(3)] == ["backend a", "backend b", "backend a"]
    reload(app, [(a.url, 3), c.url])
    assert [client.get("/").text for _ in range(8)] == ["backend a", "backend a", "backend c",
                                                        "backend a"] * 2


def test_new_timeouts_apply_to_the_next_request(backend):
    app = make_app([backend.url], "retries:\n  attempts: 1\n")
    client = TestApp(app, lint=False)
    assert client.get("/slow?seconds=0.5").status_int == 200
    reload(app, [backend.url], "retries:\n  attempts: 1\ntimeouts:\n  read: 100ms\n")
    assert client.get("/slow?seconds=0.5", expect_errors=True).status_int == 504


def test_new_health_check_rules_apply_to_the_next_round(backend):
    app = make_app([backend.url])
    reload(app, [backend.url], health=QUICK_CHECKS + "  path: /status/503\n")
    app.health.check_once()
    assert backend.requests[-1].target == "/status/503"
    assert not app.balancer.backends[0].healthy


def test_host_port_and_max_connections_stay_until_a_restart(backend, caplog):
    app = make_app([backend.url], "port: 8080\n")
    with caplog.at_level(logging.INFO, logger="myproxy"):
        changed = reload(app, [backend.url], "port: 9090\nhost: 127.0.0.1\nlimits:\n"
                                              "  max_connections: 5\n  max_body_bytes: 1KiB\n")
    assert (app.config.port, app.config.host, app.config.limits.max_connections) == (
        8080, "0.0.0.0", 10000)
    assert app.config.limits.max_body_bytes == 1024
    assert changed == ["limits.max_body_bytes 0->1KiB"]
    assert "needs a restart: host, port, limits.max_connections" in caplog.text


def test_switching_health_checks_off_brings_down_backends_back(backends):
    a, b, _ = backends
    app = make_app([a.url, b.url])
    b.stop()
    app.health.check_once()
    assert not app.balancer.find(b.url).healthy
    reload(app, [a.url, b.url], health="  enabled: false\n")
    assert app.balancer.find(b.url).healthy
    assert not app.balancer.find(b.url).probed      # ejections now end by trial requests


def test_policy_slow_start_and_retry_budget_reach_their_parts(backend):
    app = make_app([backend.url])
    budget = app.pool.budget
    reload(app, [backend.url], "policy: least_connections\nslow_start: 30s\nretries:\n  budget: 0.5\n")
    assert (app.balancer.policy, app.balancer.slow_start) == ("least_connections", 30.0)
    assert app.balancer.choose().url == backend.url
    assert app.pool.budget is budget            # the kept pool keeps its budget's counts
    assert app.pool.settings.retries.budget == 0.5
    budget.try_spend(app.pool.settings.retries.budget)
    assert budget.share == 0.5


def test_a_started_app_checks_added_backends_at_once(backends):
    a, b, _ = backends
    app = make_app([a.url], health="  interval: 1m\n")
    app.start()
    try:
        assert wait_until(lambda: app.health.rounds >= 1, timeout=5)
        reload(app, [a.url, b.url], health="  interval: 1m\n  path: /added\n")
        assert wait_until(lambda: any(r.target == "/added" for r in b.requests), timeout=5)
    finally:
        app.stop()


def test_a_removed_backend_loses_its_idle_connections(backends):
    a, b, _ = backends
    app = make_app([a.url, b.url])
    client = TestApp(app, lint=False)
    client.get("/")
    client.get("/")
    assert len(b.server.sockets) == 1           # a keep-alive connection in the pool
    reload(app, [a.url])
    assert wait_until(lambda: not b.server.sockets, timeout=5)
    assert client.get("/").text == "backend a"


def test_reload_file_applies_a_good_file_and_refuses_a_bad_one(tmp_path, backends, caplog):
    a, b, _ = backends
    path = tmp_path / "config.yaml"
    path.write_text(config_text([a.url]))
    app = create_app(load(str(path), environ={}))
    path.write_text(config_text([b.url]))
    assert app.reload_file()
    assert [x.url for x in app.balancer.backends] == [b.url]
    path.write_text(config_text([b.url], health="  intervall: 1s\n"))
    with caplog.at_level(logging.ERROR, logger="myproxy"):
        assert not app.reload_file()
    assert f"{path}:4:3: health_check.intervall: unknown key (did you mean `interval`?)" in caplog.text
    assert [x.url for x in app.balancer.backends] == [b.url]
    reloads = {result: app.metrics.registry.get_sample_value(
        "myproxy_config_reloads_total", {"result": result}) for result in ("success", "failure")}
    assert reloads == {"success": 1, "failure": 1}


def test_changes_name_each_setting_as_written():
    old = parse(config_text(["http://h:1"]), environ={})
    new = parse(config_text(["http://h:1", ("http://h:2", 2)],
                            "admin:\n  token: s3cret\npolicy: random_two\n",
                            health=QUICK_CHECKS + "  interval: 500ms\n"), environ={})
    assert changes(old, new) == ["+backend http://h:2 weight 2", "policy round_robin->random_two",
                                 "health_check.interval 5s->500ms", "admin.token (changed)"]


def routes_text(a, b, policy="round_robin", extra_route=""):
    return (f"routes:\n  - name: kept\n    path: /k\n    policy: {policy}\n    backends: [{a}]\n"
            f"{extra_route}backends: [{b}]\nhealth_check:\n{QUICK_CHECKS}")


def test_a_route_kept_by_name_keeps_its_backends_state_and_takes_its_new_settings(backends):
    a, b, c = backends
    app = create_app(parse(routes_text(a.url, b.url), "c.yaml", environ={}))
    client = TestApp(app, lint=False)
    assert client.get("/k/1").text == "backend a" and client.get("/other").text == "backend b"
    kept = app.runtime.pool("kept").backends[0]
    added = f"  - name: more\n    path: /m\n    backends: [{c.url}, {a.url}]\n"
    changed = app.reload(parse(routes_text(a.url, b.url, "least_connections", added), "c.yaml",
                               environ={}))
    assert changed == ["+route more", "route kept: policy round_robin->least_connections"]
    pool = app.runtime.pool("kept")
    assert pool.backends[0] is kept and kept.requests == 1 and pool.balancer.policy == "least_connections"
    assert app.runtime.pool("more").backends[1] is not kept     # the same URL, another member
    assert client.get("/m").text == "backend c" and client.get("/k").text == "backend a"
    app.reload(parse(routes_text(a.url, b.url), "c.yaml", environ={}))
    assert app.runtime.pool("more") is None and client.get("/m").text == "backend b"


def test_tls_on_or_off_and_redirect_from_stay_until_a_restart_the_rest_changes():
    from app.reload import fixed_at_start
    base = "backends: [http://127.0.0.1:1]\n"
    tls = base + "tls:\n  certificates: [{cert: a.pem, key: a.key}]\n  redirect_from: 8079\n"
    plain, secure = parse(base, "c.yaml", environ={}), parse(tls, "c.yaml", environ={})
    kept_plain, kept = fixed_at_start(plain, secure)
    assert kept_plain.tls is None and kept == ["tls (on or off)"]
    kept_secure, kept = fixed_at_start(secure, plain)
    assert kept_secure.tls == secure.tls and kept == ["tls (on or off)"]
    changed = parse(tls.replace("8079", "8081") + "  min_version: '1.3'\n  hsts: 1m\n", "c.yaml",
                    environ={})
    applied, kept = fixed_at_start(secure, changed)
    assert kept == ["tls.redirect_from"]
    assert (applied.tls.redirect_from, applied.tls.min_version, applied.tls.hsts) == (8079, "1.3", 60)
    assert changes(secure, applied) == ["tls.min_version 1.2->1.3", "tls.hsts 0s->60s"]


def test_settings_the_server_bound_at_start_are_kept_and_named():
    running = parse(config_text(["http://127.0.0.1:9"]), "c.yaml", environ={})
    new = parse(config_text(["http://127.0.0.1:9"], "timeouts:\n  client_idle: 1s\n"
                            "shutdown_timeout: 3s\n"), "c.yaml", environ={})
    kept_config, kept = fixed_at_start(running, new, ("timeouts.client_idle",))
    assert kept == ["timeouts.client_idle"]
    assert kept_config.timeouts.client_idle == running.timeouts.client_idle
    assert kept_config.shutdown_timeout == 3.0
    assert fixed_at_start(running, new)[0].timeouts.client_idle == 1.0


def test_the_cluster_settings_stay_until_a_restart(backend, caplog):
    app = make_app([backend.url])
    with caplog.at_level(logging.INFO, logger="myproxy"):
        reload(app, [backend.url], "cluster:\n  redis: redis://:s3cret@127.0.0.1:1/0\n")
    assert not app.config.cluster.enabled and app.cluster is None
    assert "needs a restart: cluster" in caplog.text and "s3cret" not in caplog.text
