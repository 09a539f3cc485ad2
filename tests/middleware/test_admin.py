"""The admin surface over WSGI: routing, access control, /health, and the /status document."""
import base64
import re

import pytest
from webtest import TestApp

from app import create_app
from app.config import ConfigError, parse
from tests.scripted import ScriptedBackend

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
OUTSIDE = {"REMOTE_ADDR": "203.0.113.9"}


def make_app(urls, extra=""):
    text = "backends:\n" + "".join(f"  - {url}\n" for url in urls) + extra
    return create_app(parse(text, environ={}))


def client_of(app, environ=LOOPBACK):
    return TestApp(app, lint=False, extra_environ=environ)


PAGES = ["/_myproxy/status", "/_myproxy/metrics", "/_myproxy/", "/_myproxy"]


@pytest.mark.parametrize("path", PAGES)
def test_without_a_token_loopback_clients_are_answered(backend, path):
    assert client_of(make_app([backend.url])).get(path).status_int == 200


@pytest.mark.parametrize("address", ["::1", "127.0.0.2", "::ffff:127.0.0.1"])
def test_every_loopback_form_counts_as_loopback(backend, address):
    client = client_of(make_app([backend.url]), {"REMOTE_ADDR": address})
    assert client.get("/_myproxy/status").status_int == 200


@pytest.mark.parametrize("path", PAGES)
def test_without_a_token_other_clients_get_403_and_learn_nothing(backend, path):
    response = client_of(make_app([backend.url]), OUTSIDE).get(path, status=403)
    assert backend.url not in response.text and "127.0.0.1" not in response.text
    assert backend.requests == []


TOKEN = "admin:\n  token: s3cret-Token\n"


@pytest.mark.parametrize("path", PAGES)
def test_with_a_token_a_request_without_it_gets_401(backend, path):
    response = client_of(make_app([backend.url], TOKEN)).get(path, status=401)
    challenges = response.headers.getall("WWW-Authenticate")
    assert any(c.startswith("Bearer") for c in challenges)
    assert backend.url not in response.text


@pytest.mark.parametrize("authorization", [
    "Bearer wrong", "Bearer s3cret-token", "Bearer s3cret-Token-and-more", "Bearer ", "s3cret-Token",
    "Basic " + base64.b64encode(b"admin:wrong").decode(), "Basic !!notbase64",
], ids=["wrong", "wrong-case", "longer", "empty", "no-scheme", "basic-wrong", "basic-garbage"])
def test_with_a_token_a_wrong_one_gets_401(backend, authorization):
    client = client_of(make_app([backend.url], TOKEN))
    response = client.get("/_myproxy/status", headers={"Authorization": authorization}, status=401)
    assert backend.url not in response.text


@pytest.mark.parametrize("authorization", [
    "Bearer s3cret-Token", "bearer s3cret-Token",
    "Basic " + base64.b64encode(b"anyone:s3cret-Token").decode(),
], ids=["bearer", "lower-case-scheme", "basic-password"])
def test_with_a_token_the_right_one_opens_every_page_from_anywhere(backend, authorization):
    client = client_of(make_app([backend.url], TOKEN), OUTSIDE)
    for path in PAGES:
        assert client.get(path, headers={"Authorization": authorization}).status_int == 200


def test_with_a_token_loopback_clients_need_it_too(backend):
    client_of(make_app([backend.url], TOKEN), LOOPBACK).get("/_myproxy/status", status=401)


@pytest.mark.parametrize("environ", [LOOPBACK, OUTSIDE], ids=["loopback", "outside"])
@pytest.mark.parametrize("extra", ["", TOKEN], ids=["no-token", "token"])
def test_health_is_always_open(backend, environ, extra):
    response = client_of(make_app([backend.url], extra), environ).get("/_myproxy/health")
    assert (response.status_int, response.text) == (200, "ok\n")
    assert backend.requests == []


@pytest.mark.parametrize("environ", [LOOPBACK, OUTSIDE], ids=["loopback", "outside"])
@pytest.mark.parametrize("extra", ["", TOKEN], ids=["no-token", "token"])
def test_live_is_always_open_and_200_while_draining_with_no_healthy_backend(backend, environ,
                                                                           extra):
    app = make_app([backend.url], extra + "health_check:\n  fall: 1\n  timeout: 500ms\n")
    backend.stop()
    app.health.check_once()
    app.shutdown.begin()
    client_of(app, environ).get("/_myproxy/health", status=503)
    response = client_of(app, environ).get("/_myproxy/live")
    assert (response.status_int, response.text) == (200, "alive\n")


def test_health_is_503_while_draining(backend):
    app = make_app([backend.url])
    app.shutdown.begin()
    response = client_of(app).get("/_myproxy/health", status=503)
    assert response.text == "draining\n"


def test_health_is_503_with_no_healthy_backend(backend):
    app = make_app([backend.url], "health_check:\n  fall: 1\n  timeout: 500ms\n")
    backend.stop()
    app.health.check_once()
    response = client_of(app).get("/_myproxy/health", status=503)
    assert response.text == "no healthy backend\n"


@pytest.mark.parametrize("path", ["/_myproxy/nothing", "/_myproxy/status/extra", "/_myproxy/health/x"])
def test_unknown_admin_paths_are_404_and_never_proxied(backend, path):
    client_of(make_app([backend.url])).get(path, status=404)
    assert backend.requests == []


@pytest.mark.parametrize("path", ["/_myproxyx", "/_myproxy.html", "/api/_myproxy/status"])
def test_paths_that_only_look_like_the_prefix_are_proxied(backend, path):
    client_of(make_app([backend.url])).get(path)
    assert backend.requests[-1].target == path


def test_a_custom_prefix_moves_the_admin_pages(backend):
    client = client_of(make_app([backend.url], "admin:\n  prefix: /ops/\n"))
    assert client.get("/ops/health").text == "ok\n"
    client.get("/_myproxy/health")
    assert backend.requests[-1].target == "/_myproxy/health"


def test_admin_pages_answer_get_and_head_only(backend):
    client = client_of(make_app([backend.url]))
    response = client.post("/_myproxy/status", status=405)
    assert response.headers["Allow"] == "GET, HEAD"
    head = client.head("/_myproxy/status")
    assert head.status_int == 200 and head.body == b""
    assert backend.requests == []


def test_the_status_page_is_self_contained(backend):
    response = client_of(make_app([backend.url])).get("/_myproxy/")
    assert response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    text = response.text.replace("http://www.w3.org/2000/svg", "")   # a name, never fetched
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"\b(src|href)\s*=", text)
    assert response.headers["Cache-Control"] == "no-store"


def test_status_reports_traffic_health_and_the_balancer(backends):
    app = make_app([b.url for b in backends], "health_check:\n  fall: 2\n  rise: 2\n  timeout: 500ms\n")
    client = client_of(app)
    for _ in range(2):
        client.get("/")                     # a
        client.get("/status/500", status=500)  # b
        client.get("/status/404", status=404)  # c
    backends[2].stop()
    app.health.check_once()
    app.health.check_once()
    document = client.get("/_myproxy/status").json
    assert document["config"]["policy"] == "round_robin"
    assert document["totals"] == {**document["totals"], "backends": 3, "up": 2, "requests": 6,
                                  "errors": 2, "in_flight": 0}
    a, b, c = document["backends"]
    assert (a["state"], b["state"], c["state"]) == ("up", "up", "down")
    assert a["responses"]["2xx"] == 2 and a["errors"] == 0
    assert b["responses"]["5xx"] == 2 and b["errors"] == 2 and b["window"]["error_rate"] == 1.0
    assert c["responses"]["4xx"] == 2
    assert c["health"]["failures"] == 2 and c["health"]["fall"] == 2
    assert "refused" in c["last_error"]
    assert [check["ok"] for check in c["health"]["checks"]] == [False, False]
    assert c["health"]["checks"][-1]["error"] == c["last_error"]
    assert c["since"] >= a["since"]
    assert a["window"]["requests"] == 2 and a["window"]["latency_ms"]["p50"] > 0
    assert sum(point["requests"] for point in a["series"]) == 2


def test_status_shows_a_backend_ejected_for_failed_requests(backend):
    bad = ScriptedBackend("reset", "bad").start()
    try:
        app = make_app([bad.url, backend.url],
                       "passive_health:\n  failures: 1\n  eject_for: 30s\nhealth_check:\n  enabled: false\n")
        client = client_of(app)
        assert client.get("/").text == "backend solo"          # reset by bad, retried
        document = client.get("/_myproxy/status").json
        ejected, good = document["backends"]
        assert (ejected["state"], good["state"]) == ("ejected", "up")
        assert 0 < ejected["ejection_left_seconds"] <= 30
        assert ejected["upstream_errors"] == {"reset": 1} and "reset" in ejected["last_error"]
        assert document["totals"]["up"] == 1
        metrics = client.get("/_myproxy/metrics").text
        assert f'myproxy_backend_up{{backend="{bad.url}",route="default"}} 0.0' in metrics
    finally:
        bad.stop()


def test_a_prefix_of_slash_is_a_config_error():
    with pytest.raises(ConfigError, match=r"admin\.prefix: must be a path below '/'"):
        parse("backends:\n  - http://h:1\nadmin:\n  prefix: /\n", environ={})


def test_status_shows_a_backend_with_weight_0_drained(backends):
    client = client_of(make_app([backends[0].url], f"  - url: {backends[1].url}\n    weight: 0\n"))
    states = [b["state"] for b in client.get("/_myproxy/status").json["backends"]]
    assert states == ["up", "drained"]
