"""Routes over real sockets, under ``python wsgi.py`` and gunicorn: which backend a request
reaches by host and path, what it sees with ``strip_prefix``, the 404 without a default
pool, per-route pools and health, no retry across routes, the access line and metrics, and
SIGHUP adding and removing routes under load with no failed request."""
import http.client
import signal
import time

import gevent
import pytest
import yaml

from tests.backends import TestBackend, free_port, wait_until
from tests.conftest import base_config
from tests.servers import SERVERS, launch, serving
from tests.rawclient import request

NAMES = ("api", "apiv2", "web", "wild", "deep", "docs", "shared", "fallback")


@pytest.fixture(scope="module")
def farm():
    started = {name: TestBackend(name).start() for name in NAMES}
    yield started
    for backend in started.values():
        backend.stop()


def routes_config(farm, default=True, **overrides):
    url = {name: backend.url for name, backend in farm.items()}
    config = base_config([url["fallback"]] if default else [], **overrides)
    if not default:
        del config["backends"]
    config["routes"] = [
        {"name": "api", "host": "api.test", "path": "/api", "strip_prefix": True,
         "backends": [url["api"]]},
        {"name": "api-v2", "host": "api.test", "path": "/api/v2", "backends": [url["apiv2"]]},
        {"name": "web", "host": ["web.test", "www.web.test"], "backends": [url["web"]]},
        {"name": "wild", "host": "*.apps.test", "backends": [url["wild"]]},
        {"name": "deep", "host": "*.eu.apps.test", "backends": [url["deep"]]},
        {"name": "docs", "path": "/docs", "backends": [url["docs"]]},
        # One backend in two routes: two members, each with its own health checks.
        {"name": "hc-fail", "host": "hc.test", "path": "/fail", "backends": [url["shared"]],
         "health_check": {"path": "/status/500", "rise": 1, "fall": 1}},
        {"name": "hc-pass", "host": "hc.test", "path": "/pass", "backends": [url["shared"]]},
        # A route whose only backend refuses: its requests are never retried elsewhere.
        {"name": "dead", "host": "dead.test", "backends": [f"http://127.0.0.1:{free_port()}"],
         "health_check": {"enabled": False}, "retries": {"attempts": 3}},
    ]
    return config


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, farm, tmp_path_factory):
    with serving(request.param, tmp_path_factory, routes_config(farm)) as process:
        yield process


@pytest.fixture(scope="module", params=SERVERS)
def bare(request, farm, tmp_path_factory):
    with serving(request.param, tmp_path_factory, routes_config(farm, default=False)) as process:
        yield process


def send(port, host, target, first_line=None):
    line = first_line or f"GET {target} HTTP/1.1"
    return request(port, f"{line}\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))


def seen(backend, target):
    """The requests for ``target`` that reached ``backend`` (health checks left out)."""
    return [r for r in backend.requests if r.target == target
            and r.header("User-Agent") != "myproxy-health-check"]


@pytest.mark.parametrize("host,target,name,backend_target", [
    ("api.test", "/api/users?id=1", "api", "/users?id=1"),        # strip_prefix keeps the query
    ("api.test", "/api", "api", "/"),                             # "/" at least
    ("api.test", "/api?q", "api", "/?q"),
    ("api.test", "/api/v2/items", "apiv2", "/api/v2/items"),      # the longest prefix wins
    ("api.test", "/apix", "fallback", "/apix"),                   # whole segments only
    ("api.test", "/%61pi/x", "fallback", "/%61pi/x"),             # never decoded
    ("API.Test:8080", "/api/up", "api", "/up"),                   # lowercased, port removed
    ("www.web.test", "/page", "web", "/page"),                    # a list of hosts
    ("one.apps.test", "/w", "wild", "/w"),
    ("x.y.apps.test", "/w2", "wild", "/w2"),                      # one or more labels
    ("x.eu.apps.test", "/w3", "deep", "/w3"),                     # the longer wildcard wins
    ("apps.test", "/w4", "fallback", "/w4"),
    ("web.test", "/docs/a", "web", "/docs/a"),                    # an exact host beats any host
    ("elsewhere.test", "/docs/b", "docs", "/docs/b"),
])
def test_requests_reach_the_route_by_host_and_path(proxy, farm, host, target, name, backend_target):
    status, _, body = send(proxy.port, host, target)
    assert (status, body) == (200, f"backend {name}".encode())
    assert wait_until(lambda: seen(farm[name], backend_target), timeout=5)


def test_an_absolute_form_target_is_routed_by_its_authority(proxy, farm):
    status, _, body = send(proxy.port, "wrong.test", None,
                           first_line="GET http://web.test/absolute HTTP/1.1")
    assert (status, body) == (200, b"backend web")


def test_the_access_line_names_the_route(proxy):
    assert send(proxy.port, "api.test", "/api/logged-route")[0] == 200
    assert wait_until(lambda: "target=/api/logged-route" in proxy.output, timeout=5)
    line = next(line for line in proxy.output.splitlines() if "target=/api/logged-route" in line)
    assert "route=api " in line


def test_without_a_default_pool_an_unmatched_request_is_a_404_naming_host_and_path(bare):
    status, headers, body = send(bare.port, "nowhere.test", "/some/where?x=1")
    assert status == 404
    assert body == (b"404 Not Found: no route for host nowhere.test and path /some/where "
                    b"(request_id=" + headers["x-request-id"].encode() + b")\n")
    assert wait_until(lambda: "/some/where?x=1\"" in bare.output, timeout=5)
    line = next(line for line in bare.output.splitlines() if "/some/where?x=1\"" in line)
    assert "status=404" in line and "route=- " in line
    assert send(bare.port, "api.test", "/api/still")[0] == 200


def test_the_same_backend_in_two_routes_has_two_health_states(proxy, farm):
    # hc-fail checks /status/500 on the backend that hc-pass checks on "/": down in one only.
    assert wait_until(lambda: send(proxy.port, "hc.test", "/fail")[0] == 503, timeout=10)
    status, headers, body = send(proxy.port, "hc.test", "/fail")
    assert status == 503 and b"(route=hc-fail " in body and "retry-after" in headers
    status, _, body = send(proxy.port, "hc.test", "/pass")
    assert (status, body) == (200, b"backend shared")
    document = yaml.safe_load(send(proxy.port, "127.0.0.1", "/_myproxy/status")[2])
    states = {(b["route"], b["url"]): b["state"] for b in document["backends"]}
    assert states[("hc-fail", farm["shared"].url)] == "down"
    assert states[("hc-pass", farm["shared"].url)] == "up"
    assert [route["name"] for route in document["routes"]][:2] == ["api-v2", "api"]


def test_a_request_is_never_retried_on_another_routes_backends(proxy, farm):
    status, _, body = send(proxy.port, "dead.test", "/cross-route")
    assert status == 502 and b"backend failed" in body
    assert all(not seen(backend, "/cross-route") for backend in farm.values())


def test_metrics_carry_the_route(proxy, farm):
    assert send(proxy.port, "one.apps.test", "/metered")[0] == 200
    metrics = send(proxy.port, "127.0.0.1", "/_myproxy/metrics")[2].decode()
    assert f'myproxy_backend_up{{backend="{farm["shared"].url}",route="hc-fail"}} 0.0' in metrics
    assert f'myproxy_backend_up{{backend="{farm["shared"].url}",route="hc-pass"}} 1.0' in metrics
    assert f'backend="{farm["wild"].url}",code="200",route="wild"}}' in metrics


# --- reload ---------------------------------------------------------------------------------


class Load:
    """Clients sending to the given hosts in turn on keep-alive connections, every result kept."""

    def __init__(self, port: int, hosts, clients: int = 3, limit: int = 6000):
        self.port, self.hosts, self.limit = port, hosts, limit
        self.results: list[tuple[float, str, object]] = []
        self.stopped = False
        self.greenlets = [gevent.spawn(self._run) for _ in range(clients)]

    def _run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        index = 0
        while not self.stopped and len(self.results) < self.limit:
            host = self.hosts[index % len(self.hosts)]
            index += 1
            sent = time.monotonic()
            try:
                connection.request("GET", "/load", headers={"Host": host})
                response = connection.getresponse()
                body = response.read().decode()
                result = body if response.status == 200 else f"status {response.status}: {body}"
            except Exception as error:  # noqa: BLE001 - every failure is a result
                result = error
                connection.close()
            self.results.append((sent, host, result))

    def after(self, moment: float, host: str) -> set:
        return {result for sent, h, result in self.results if sent > moment and h == host}

    def stop(self):
        self.stopped = True
        gevent.joinall(self.greenlets, timeout=15)


def reload_config(urls, routes):
    config = base_config([urls["fallback"]])
    config["routes"] = [{"name": name, "host": f"{host}.test", "backends": [urls[backend]]}
                        for name, host, backend in routes]
    return config


@pytest.mark.parametrize("kind", SERVERS)
def test_sighup_adds_and_removes_routes_under_load_and_fails_nothing(kind, farm, tmp_path):
    urls = {name: backend.url for name, backend in farm.items()}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(reload_config(urls, [("old", "old", "web"), ("kept", "kept", "api")])))
    workers = 2 if kind == "gunicorn" else 1
    proxy = launch(kind, str(path), workers=workers)
    # A worker takes over SIGHUP once it is ready; before that, gunicorn would replace it.
    assert kind != "gunicorn" or wait_until(
        lambda: proxy.output.count(" ready: SIGHUP reloads") >= workers, timeout=10)
    load = Load(proxy.port, ["old.test", "kept.test", "new.test"])
    try:
        assert wait_until(lambda: len(load.results) >= 60, timeout=10)
        assert load.after(0, "new.test") == {"backend fallback"}
        # A request of the route about to go, still in flight when the reload lands.
        farm["web"].release.clear()
        waiting = gevent.spawn(send, proxy.port, "old.test", f"/wait?{kind}")
        assert wait_until(lambda: seen(farm["web"], f"/wait?{kind}"), timeout=5)

        path.write_text(yaml.safe_dump(reload_config(urls, [("kept", "kept", "api"),
                                                            ("new", "new", "deep")])))
        proxy.signal(signal.SIGHUP)
        assert wait_until(lambda: proxy.output.count("config reloaded") >= workers, timeout=10), \
            proxy.output
        reloaded = time.monotonic()
        assert wait_until(lambda: len([r for r in load.results if r[0] > reloaded]) >= 150,
                          timeout=15)
        farm["web"].release.set()
        assert waiting.get(timeout=10)[2] == b"waited web"    # the removed route's request finished
    finally:
        load.stop()
        proxy.stop()
    failures = [result for _, _, result in load.results
                if not isinstance(result, str) or not result.startswith("backend ")]
    assert failures == [] and len(load.results) >= 210
    assert load.after(reloaded, "new.test") == {"backend deep"}     # in every worker
    assert load.after(reloaded, "old.test") == {"backend fallback"}
    assert load.after(reloaded, "kept.test") == {"backend api"}
    assert "+route new" in proxy.output and "-route old" in proxy.output
    assert "Traceback" not in proxy.output, proxy.output
