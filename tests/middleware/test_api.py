"""The runtime admin API (SPEC §9): over WSGI for its answers, over real sockets for drain."""
import json
import logging
import signal

import gevent
import pytest
from webtest import TestApp

from app import create_app
from app.config import load, parse
from tests.backends import wait_until
from tests.conftest import base_config
from tests.rawclient import connect, get, read_response, request

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
OUTSIDE = {"REMOTE_ADDR": "203.0.113.9"}
API = "/_myproxy/api/backends"
TOKEN = "admin:\n  token: s3cret\n"


def make_app(urls, extra=""):
    text = "backends:\n" + "".join(f"  - {url}\n" for url in urls) + extra
    return create_app(parse(text, environ={}))


def client_of(app, environ=LOOPBACK):
    return TestApp(app, lint=False, extra_environ=environ)


def patch(client, body, status=200, **kwargs):
    return client.patch_json(API, body, status=status, **kwargs)


def test_get_lists_every_backend_of_every_route(backends):
    a, b, c = backends
    app = make_app([a.url], f"routes:\n  - name: api\n    path: /v1\n    backends: [{b.url}, {c.url}]\n")
    rows = client_of(app).get(API).json["backends"]
    assert [(r["route"], r["backend"]) for r in rows] == [("api", b.url), ("api", c.url),
                                                          ("default", a.url)]
    assert rows[0] == {**rows[0], "state": "up", "admin_state": "ready", "weight": 1,
                       "configured_weight": 1, "admin_weight": None, "in_flight": 0,
                       "max_conns": 0, "queued": 0}


def test_get_shows_each_backends_cap_and_its_pools_queue(backend):
    app = make_app([], f"  - url: {backend.url}\n    max_conns: 3\n")
    [row] = client_of(app).get(API).json["backends"]
    assert (row["max_conns"], row["queued"]) == (3, 0)


def test_patch_drains_a_backend_answers_its_entry_and_traffic_avoids_it(backends, caplog):
    a, b, c = backends
    app = make_app([x.url for x in backends])
    client = client_of(app)
    with caplog.at_level(logging.INFO, logger="myproxy.admin"):
        entry = patch(client, {"backend": b.url, "state": "drain"}).json
    assert entry == {**entry, "route": "default", "backend": b.url, "admin_state": "drain",
                     "state": "up"}
    assert "state=ready->drain client=127.0.0.1" in caplog.text and b.url in caplog.text
    for _ in range(6):
        client.get("/")
    assert b.requests == [] and len(a.requests) == len(c.requests) == 3
    status = client.get("/_myproxy/status").json
    assert [row["admin_state"] for row in status["backends"]] == ["ready", "drain", "ready"]
    metrics = client.get("/_myproxy/metrics").text
    assert 'myproxy_admin_changes_total{action="drain"} 1.0' in metrics
    assert 'myproxy_admin_changes_total{action="ready"} 0.0' in metrics


def test_a_weight_replaces_the_configured_one_until_null(backends):
    a, b, _ = backends
    client = client_of(make_app([a.url, b.url]))
    assert patch(client, {"route": "default", "backend": a.url, "weight": 3}).json["weight"] == 3
    for _ in range(8):
        client.get("/")
    assert (len(a.requests), len(b.requests)) == (6, 2)
    entry = patch(client, {"backend": a.url, "weight": None}).json
    assert (entry["weight"], entry["admin_weight"]) == (1, None)
    assert 'myproxy_admin_changes_total{action="weight"} 2.0' in client.get("/_myproxy/metrics").text


def test_maint_with_every_backend_out_answers_503_and_health_says_so(backend):
    client = client_of(make_app([backend.url]))
    patch(client, {"backend": backend.url, "state": "maint"})
    client.get("/", status=503)
    assert backend.requests == []
    client.get("/_myproxy/health", status=503)
    patch(client, {"backend": backend.url, "state": "ready"})
    assert client.get("/").text == "backend solo"


@pytest.mark.parametrize("body, field", [
    ({"backend": "X", "state": "off"}, "state"),
    ({"backend": "X", "weight": -2}, "weight"),
    ({"backend": "X", "weight": "3"}, "weight"),
    ({"state": "drain"}, "backend"),
    ({"backend": "X"}, "state"),
    ({"backend": "X", "state": "drain", "color": "red"}, "color"),
    (["drain"], "body"),
], ids=["state", "weight-negative", "weight-string", "no-backend", "nothing-to-change",
        "unknown-field", "not-an-object"])
def test_a_bad_field_is_400_naming_it(backend, body, field):
    client = client_of(make_app([backend.url]))
    if isinstance(body, dict):             # "X" stands for the real backend's URL
        body = {key: backend.url if value == "X" else value for key, value in body.items()}
    answer = patch(client, body, status=400).json
    assert answer["field"] == field and field in answer["error"]
    assert client.get(API).json["backends"][0]["admin_state"] == "ready"


def test_a_body_that_is_not_json_is_400(backend):
    client = client_of(make_app([backend.url]))
    answer = client.patch(API, "state=drain", content_type="application/json", status=400).json
    assert answer["field"] == "body"


def test_with_routes_the_route_is_required_and_an_unknown_one_is_404(backends):
    a, b, _ = backends
    client = client_of(make_app([a.url], f"routes:\n  - name: api\n    backends: [{b.url}]\n"))
    assert patch(client, {"backend": b.url, "state": "drain"}, status=400).json["field"] == "route"
    assert "no route named" in patch(client, {"route": "web", "backend": b.url, "state": "drain"},
                                     status=404).json["error"]
    assert "has no backend" in patch(client, {"route": "api", "backend": a.url, "state": "drain"},
                                     status=404).json["error"]
    assert patch(client, {"route": "api", "backend": b.url, "state": "drain"}).json["route"] == "api"


def test_unknown_api_paths_are_404_and_wrong_methods_405(backend):
    client = client_of(make_app([backend.url]))
    client.get("/_myproxy/api/nothing", status=404)
    assert client.post_json(API, {}, status=405).headers["Allow"] == "GET, HEAD, PATCH"
    assert client.get("/_myproxy/api/reload", status=405).headers["Allow"] == "POST"
    assert backend.requests == []


@pytest.mark.parametrize("headers, content_type", [
    ({}, "application/x-www-form-urlencoded"),
    ({}, "text/plain"),
    ({"Origin": "http://evil.test"}, "application/json"),
    ({"Origin": "null"}, "application/json"),
    ({"Origin": "http://localhost:8080"}, "application/json"),
], ids=["form", "text-plain", "other-origin", "null-origin", "other-port"])
def test_what_a_page_on_another_site_could_send_is_403(backend, headers, content_type):
    client = client_of(make_app([backend.url]))
    answer = client.patch(API, json.dumps({"backend": backend.url, "state": "drain"}),
                          headers=headers, content_type=content_type, status=403).json
    assert "cross-site" in answer["error"]
    assert client.get(API).json["backends"][0]["admin_state"] == "ready"


def test_the_admin_s_own_origin_may_change_and_a_cross_origin_get_is_refused(backend):
    client = client_of(make_app([backend.url]))
    patch(client, {"backend": backend.url, "state": "drain"}, headers={"Origin": "http://localhost"})
    client.get(API, headers={"Origin": "http://evil.test"}, status=403)


def test_behind_a_trusted_tls_proxy_the_page_s_https_origin_is_the_admin_s_own(backend):
    app = make_app([backend.url], TOKEN + "forwarded:\n  trusted_proxies: [10.0.0.2]\n")
    outer = {"Origin": "https://admin.example", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "admin.example", "Authorization": "Bearer s3cret"}
    proxied = client_of(app, {"REMOTE_ADDR": "10.0.0.2", "HTTP_HOST": "10.0.0.9:8080"})
    patch(proxied, {"backend": backend.url, "state": "drain"}, headers=outer)
    # The same headers from anyone else say nothing: its origin is the request's own.
    direct = client_of(app, {"REMOTE_ADDR": "203.0.113.9", "HTTP_HOST": "10.0.0.9:8080"})
    patch(direct, {"backend": backend.url, "state": "ready"}, status=403, headers=outer)


def test_without_a_token_a_host_name_that_could_be_rebound_is_refused(backend):
    client = client_of(make_app([backend.url]), {**LOOPBACK, "HTTP_HOST": "evil.test:8080"})
    answer = patch(client, {"backend": backend.url, "state": "drain"}, status=403,
                   headers={"Origin": "http://evil.test:8080"}).json
    assert "localhost" in answer["error"]
    with_token = client_of(make_app([backend.url], TOKEN), {**OUTSIDE, "HTTP_HOST": "lb.example.com"})
    patch(with_token, {"backend": backend.url, "state": "drain"},
          headers={"Authorization": "Bearer s3cret"})


def test_the_api_has_the_admin_pages_protection(backend):
    client_of(make_app([backend.url]), OUTSIDE).get(API, status=403)
    client = client_of(make_app([backend.url], TOKEN), OUTSIDE)
    patch(client, {"backend": backend.url, "state": "drain"}, status=401)
    assert patch(client, {"backend": backend.url, "state": "drain"},
                 headers={"Authorization": "Bearer s3cret"}).json["admin_state"] == "drain"


def test_reload_answers_what_changed_or_the_error_and_keeps_admin_states(backends, write_config):
    a, b, c = backends
    path = write_config(base_config([a.url, b.url]))
    app = create_app(load(path))
    client = client_of(app)
    patch(client, {"backend": b.url, "state": "drain"})
    write_config(base_config([a.url, b.url, c.url], port=9999))
    answer = client.post_json("/_myproxy/api/reload", {}).json
    assert answer == {"changed": [f"+backend {c.url}"], "needs_restart": ["port"]}
    rows = client.get(API).json["backends"]
    assert [r["admin_state"] for r in rows] == ["ready", "drain", "ready"]   # kept over a reload

    write_config("backends:\n  - http://h:1\n  nonsense: 2\n")
    error = client.post_json("/_myproxy/api/reload", {}, status=400).json["error"]
    assert "the running config stays" in error and "config.yaml:3" in error
    assert len(client.get(API).json["backends"]) == 3
    metrics = client.get("/_myproxy/metrics").text
    assert 'myproxy_admin_changes_total{action="reload"} 1.0' in metrics
    assert 'myproxy_config_reloads_total{result="failure"} 1.0' in metrics

    write_config(base_config([a.url, c.url]))             # b removed: its drain is forgotten
    client.post_json("/_myproxy/api/reload", {})
    write_config(base_config([a.url, b.url, c.url]))
    client.post_json("/_myproxy/api/reload", {})
    assert [r["admin_state"] for r in client.get(API).json["backends"]] == ["ready"] * 3


def test_a_sighup_reload_keeps_a_drain_over_real_sockets(start_proxy, backends, write_config):
    a, b, _ = backends
    config = base_config([a.url, b.url])
    proxy = start_proxy(config)
    body = json.dumps({"backend": b.url, "state": "drain"}).encode()
    status, _, answer = request(proxy.port, b"PATCH /_myproxy/api/backends HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
    assert status == 200 and json.loads(answer)["admin_state"] == "drain"
    proxy.wait_for(rf"admin change: action=drain route=default backend={b.url} state=ready->drain client=127.0.0.1")
    write_config({**config, "log_format": "text"})
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("config reloaded")
    assert all(get(proxy.port, "/x")[2] == b"backend a" for _ in range(6))
    assert not [r for r in b.requests if r.target == "/x"]      # health checks go on


def test_drain_lets_in_flight_requests_finish_and_sends_no_new_ones(start_proxy, backends):
    a, b, _ = backends
    proxy = start_proxy(base_config([a.url, b.url]))
    get(proxy.port)                               # a
    slow = connect(proxy.port)
    slow.sendall(b"GET /slow?seconds=1 HTTP/1.1\r\nHost: t\r\n\r\n")   # b
    assert wait_until(lambda: any(r.target.startswith("/slow") for r in b.requests), timeout=5)
    body = json.dumps({"backend": b.url, "state": "drain"}).encode()
    status = request(proxy.port, b"PATCH /_myproxy/api/backends HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))[0]
    assert status == 200
    bodies = [get(proxy.port, "/x")[2] for _ in range(5)]
    assert bodies == [b"backend a"] * 5 and not [r for r in b.requests if r.target == "/x"]
    assert read_response(slow)[2] == b"slow b"    # in flight: finished
    slow.close()
    gevent.sleep(0)


def test_over_https_the_admin_s_own_https_origin_may_change_and_plain_http_may_not(start_proxy, backend,
                                                                                   tmp_path):
    import ssl
    from tests.certs import make_certificate
    cert, key = make_certificate(tmp_path, "site", ["127.0.0.1"])
    proxy = start_proxy(base_config([backend.url], tls={"certificates": [{"cert": cert, "key": key}]}))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    body = json.dumps({"backend": backend.url, "state": "drain"}).encode()
    answers = []
    for origin in (f"http://127.0.0.1:{proxy.port}", f"https://127.0.0.1:{proxy.port}"):
        with context.wrap_socket(connect(proxy.port), server_hostname="127.0.0.1") as sock:
            sock.sendall(b"PATCH /_myproxy/api/backends HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                         b"Origin: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (proxy.port, origin.encode(), len(body), body))
            answers.append(read_response(sock)[0])
    assert answers == [403, 200]


def test_a_drained_backend_keeps_its_sticky_clients_and_takes_no_new_ones(backends):
    app = make_app([x.url for x in backends], "sticky:\n  cookie: lb\n")
    returning = client_of(app)
    returning.get("/")
    [served] = [x for x in backends if x.requests]
    patch(client_of(app), {"backend": served.url, "state": "drain"})
    for _ in range(3):
        returning.get("/")
    assert len(served.requests) == 4              # its sticky client stays
    for _ in range(6):
        client_of(app).get("/")                   # new clients, no cookie
    assert len(served.requests) == 4
    patch(client_of(app), {"backend": served.url, "state": "maint"})
    returning.get("/")
    assert len(served.requests) == 4              # maint: not even its sticky clients
