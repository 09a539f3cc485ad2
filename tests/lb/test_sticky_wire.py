"""Sticky sessions over real sockets: the proxy in this process on a real pywsgi server
(health checks not started: only requests change anything), then ``python wsgi.py`` and a
gunicorn group of 3 workers, where each client's requests must land on one backend."""
import collections
import http.client
import re

import pytest
import websocket
import yaml

from app.config import StickyConfig, parse
from app.lb.sticky import Sticky
from tests.backends import TestBackend, wait_until
from tests.conftest import base_config
from tests.middleware.test_metrics import client_of, scrape, value as sample
from tests.servers import launch
from tests.websocket_backend import WebSocketBackend

STICKY = {"cookie": "lb"}


def call(port, target="/", cookies=(), host="t"):
    """One request on a connection of its own, each of ``cookies`` a ``Cookie`` line of its
    own; returns (status, body, the Set-Cookie lines)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host)
        for line in cookies:
            connection.putheader("Cookie", line)
        connection.putheader("Connection", "close")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode(), response.msg.get_all("Set-Cookie") or []
    finally:
        connection.close()


def sticky_value(set_cookies, name="lb"):
    """The value our Set-Cookie line gives, or None."""
    for line in set_cookies:
        match = re.match(rf"{name}=([^;]*)", line)
        if match:
            return match.group(1)
    return None


def client_lines(backend):
    """The Cookie lines of the last request ``backend`` saw."""
    return [v for k, v in backend.requests[-1].headers if k.lower() == "cookie"]


def test_a_new_client_gets_a_cookie_and_stays_whatever_the_policy(serve, backends):
    app = serve([b.url for b in backends], sticky=STICKY)
    status, body, cookies = call(app.port)
    assert status == 200 and len(cookies) == 1
    assert re.fullmatch(r"lb=[A-Za-z0-9_-]{16}; Path=/; HttpOnly; SameSite=Lax", cookies[0])
    first, value = body, sticky_value(cookies)
    for _ in range(5):          # round robin would go a, b, c: the cookie holds it
        status, body, cookies = call(app.port, cookies=[f"lb={value}"])
        assert (status, body, cookies) == (200, first, [])      # no Set-Cookie on a hit
    # Without the cookie, round robin goes on as before.
    assert {call(app.port)[1] for _ in range(3)} == {"backend a", "backend b", "backend c"}


def test_the_backend_never_sees_the_sticky_cookie_and_every_other_one_byte_for_byte(serve, backend):
    app = serve([backend.url], sticky=STICKY)
    value = sticky_value(call(app.port)[2])
    lines = [f"a=1; lb={value}", "b=2;c=\"x y\"", f"lb={value}", f"d=4;lb={value};e=5"]
    assert call(app.port, cookies=lines)[0] == 200
    assert client_lines(backend) == ["a=1", "b=2;c=\"x y\"", "d=4;e=5"]
    call(app.port, cookies=["x=1; y=2"])                    # no sticky cookie: untouched
    assert client_lines(backend) == ["x=1; y=2"]


def test_the_backends_own_set_cookie_lines_pass_untouched(serve, backend):
    app = serve([backend.url], sticky=STICKY)
    status, body, cookies = call(app.port, "/cookie")
    assert cookies[:2] == ["a=1; Path=/", "b=2; Path=/"] and sticky_value(cookies[2:])
    status, body, cookies = call(app.port, "/cookie", cookies=[f"lb={sticky_value(cookies)}"])
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]


def test_a_backend_in_maint_or_gone_rebalances_and_a_drained_one_keeps_its_users(serve, backends):
    app = serve([b.url for b in backends], sticky=STICKY, health_check={"enabled": False})
    pool = app.runtime.default
    _, first, cookies = call(app.port)
    value = sticky_value(cookies)
    owner = next(b for b in pool.backends
                 if Sticky(StickyConfig(cookie="lb")).backend_id(b) == value)
    owner.admin_state = "drain"
    assert call(app.port, cookies=[f"lb={value}"])[1:] == (first, [])
    owner.admin_state = "maint"
    _, other, cookies = call(app.port, cookies=[f"lb={value}"])
    moved = sticky_value(cookies)
    assert other != first and moved not in (None, value)
    assert call(app.port, cookies=[f"lb={moved}"])[1:] == (other, [])   # and stays there
    owner.admin_state = "ready"
    # A forged value is a miss: balanced, and a cookie set.
    assert sticky_value(call(app.port, cookies=["lb=forged"])[2]) is not None
    samples = scrape(client_of(app))
    assert sample(samples, "myproxy_sticky_total", route="default", result="hit") == 2
    assert sample(samples, "myproxy_sticky_total", route="default", result="rebalanced") == 1
    assert sample(samples, "myproxy_sticky_total", route="default", result="new") == 2


def test_when_its_backend_fails_the_retry_replaces_the_cookie(serve):
    alive = TestBackend("alive").start()
    doomed = TestBackend("doomed").start()
    try:
        app = serve([doomed.url, alive.url], sticky=STICKY, health_check={"enabled": False},
                    passive_health={"failures": 0})
        _, body, cookies = call(app.port)
        assert body == "backend doomed"
        doomed.stop()                       # refused from now on: retried on the other
        status, body, cookies = call(app.port, cookies=[f"lb={sticky_value(cookies)}"])
        assert (status, body) == (200, "backend alive")
        moved = sticky_value(cookies)
        assert call(app.port, cookies=[f"lb={moved}"])[1:] == ("backend alive", [])
        samples = scrape(client_of(app))
        assert sample(samples, "myproxy_sticky_total", route="default", result="rebalanced") == 1
    finally:
        alive.stop()


def test_each_route_has_its_own_cookie_with_path_slash_under_strip_prefix(serve, backends):
    app = serve([backends[0].url], routes=[
        {"name": "api", "path": "/api", "strip_prefix": True,
         "backends": [backends[1].url, backends[2].url], "sticky": {"cookie": "api_lb"}}])
    assert call(app.port)[2] == []                           # the default pool: off
    _, body, cookies = call(app.port, "/api/users")
    assert re.fullmatch(r"api_lb=\S+; Path=/; HttpOnly; SameSite=Lax", cookies[0])
    value = sticky_value(cookies, "api_lb")
    assert {call(app.port, "/api/x", cookies=[f"api_lb={value}"])[1] for _ in range(4)} == {body}


def test_a_websocket_follows_the_cookie(serve):
    ws_backends = [WebSocketBackend(name).start() for name in ("a", "b", "c")]
    try:
        app = serve([b.url for b in ws_backends], sticky=STICKY)
        first = websocket.create_connection(f"ws://127.0.0.1:{app.port}/", timeout=10)
        headers = first.getheaders()
        value = sticky_value([headers["set-cookie"]])
        first.close()
        for _ in range(3):
            ws = websocket.create_connection(f"ws://127.0.0.1:{app.port}/", timeout=10,
                                             cookie=f"a=1; lb={value}")
            assert ws.getheaders()["x-backend"] == headers["x-backend"]
            assert "set-cookie" not in ws.getheaders()
            ws.send("ping")
            assert ws.recv() == "ping"
            ws.close()
        owner = next(b for b in ws_backends if b.name == headers["x-backend"])
        assert [v for k, v in owner.requests[-1].headers if k.lower() == "cookie"] == ["a=1"]
    finally:
        for backend in ws_backends:
            backend.stop()


@pytest.mark.parametrize("kind,workers", [("wsgi.py", 1), ("gunicorn", 3), ("gunicorn-gevent", 2)])
def test_each_client_stays_on_one_backend_across_workers(kind, workers, backends, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config([b.url for b in backends], sticky=STICKY)))
    proxy = launch(kind, str(path), workers=workers)
    try:
        seen = {}
        for client in range(12):
            _, body, cookies = call(proxy.port)
            value = sticky_value(cookies)
            bodies = {body} | {call(proxy.port, cookies=[f"lb={value}"])[1] for _ in range(6)}
            seen[client] = bodies
            if client == 0:
                value0 = value
        assert all(len(bodies) == 1 for bodies in seen.values()), seen
        assert len(set().union(*seen.values())) == 3         # new clients still spread
        # Two Cookie lines: kept as two, except by gunicorn's stock worker, which joins
        # them with "," before the app sees them.
        owner = next(b for b in backends if f"backend {b.name}" in seen[0])
        assert call(proxy.port, cookies=[f"a=1; lb={value0}", "b=2"])[1] == f"backend {owner.name}"
        assert client_lines(owner) == (["a=1; b=2"] if kind == "gunicorn-gevent" else ["a=1", "b=2"])
        assert wait_until(lambda: proxy.output.count("sticky=hit") >= 12 * 6 + 1)
        assert proxy.output.count("sticky=new") == 12
        # The group's workers each served some of them: the ids agree across workers.
        served = re.findall(r"\[(\d+)\] INFO myproxy\.access .*sticky=hit", proxy.output)
        assert kind == "wsgi.py" or len(set(served)) == workers, collections.Counter(served)
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.output


def test_a_reload_keeps_every_client_where_it_was(serve, backends):
    urls = [b.url for b in backends]
    app = serve(urls, sticky=STICKY)
    clients = {}
    for _ in range(3):
        _, body, cookies = call(app.port)
        clients[sticky_value(cookies)] = body
    reordered = base_config(urls[::-1], sticky=STICKY, retries={"attempts": 3})
    app.reload(parse(yaml.safe_dump(reordered), environ={}))
    for value, body in clients.items():
        assert call(app.port, cookies=[f"lb={value}"])[1:] == (body, [])
