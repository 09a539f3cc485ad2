"""Rate limits over real sockets: ``python wsgi.py`` and a gunicorn group of three workers."""
import os
import re
import signal
import time

import gevent
import pytest

from tests.backends import wait_until
from tests.conftest import base_config
from tests.rawclient import connect, get, read_response
from tests.server.test_gunicorn import start_gunicorn  # noqa: F401 - a fixture

HOURLY = {"rate": "1/h", "burst": 0, "key": "route"}     # one request, then 429 for an hour


def flood(port, seconds, target="/flood", connections=1, fresh=False):
    """Clients sending back to back for ``seconds``: each on one keep-alive connection, or
    (``fresh``) each request on a new one, which a gunicorn group spreads over its
    workers. Returns the statuses counted, and the seconds from the first answer on."""
    counts: dict[int, int] = {}
    first: list[float] = []
    deadline = time.monotonic() + seconds

    def client():
        sock = None
        while time.monotonic() < deadline:
            if sock is None:
                sock = connect(port)
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n"
                         f"{'Connection: close' if fresh else ''}\r\n\r\n".encode())
            status = read_response(sock)[0]
            first.append(time.monotonic()) if not first else None
            counts[status] = counts.get(status, 0) + 1
            if fresh:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    gevent.joinall([gevent.spawn(client) for _ in range(connections)], raise_error=True)
    return counts, deadline - first[0]


def assert_rate(counts, elapsed, rate, burst):
    """Admitted: ``burst + rate × elapsed`` (app.lb.ratelimit), within 10 % below (a
    client slowed down by a busy machine asks less) and two above: the GCRA's one at
    once over the burst, and one for the window the client measures (from its first
    answer, not the proxy's first admission, to its deadline, with requests in flight)
    being a little shorter than the proxy's. Twice the rate (two limits) is far outside."""
    expected = burst + rate * elapsed
    assert 0.9 * expected <= counts.get(200, 0) <= expected + 2, (counts, expected)
    assert counts.get(429, 0) > counts.get(200, 0)           # it did ask faster than that


def forwarded(backend, target):
    return sum(1 for seen in backend.requests if seen.target == target)


def test_one_client_flooding_one_connection_gets_the_rate_and_the_burst(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url],
                                    rate_limit={"rate": "20/s", "burst": 5}))
    counts, elapsed = flood(proxy.port, 3.0)
    assert_rate(counts, elapsed, 20, 5)
    assert forwarded(backend, "/flood") == counts[200]        # no 429 reached the backend


def test_a_refusal_is_429_with_retry_after_and_keeps_the_connection(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], rate_limit=HOURLY))
    with connect(proxy.port) as sock:
        for expected in (200, 429, 429):
            sock.sendall(b"GET /once HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = read_response(sock)
            assert status == expected
    assert headers["retry-after"] in ("3599", "3600")
    assert headers["content-type"].startswith("text/plain")
    assert body.startswith(b"429 Too Many Requests: over the rate limit") and b"route=default" in body
    status, _, _ = get(proxy.port, "/once", headers="Content-Length: 3\r\n")   # with a body too
    assert status == 429
    assert forwarded(backend, "/once") == 1


def test_health_and_the_admin_pages_are_never_limited(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], rate_limit=HOURLY))
    assert get(proxy.port, "/")[0] == 200
    assert get(proxy.port, "/")[0] == 429
    for path in ("/health", "/live", "/status", "/metrics", "/health", "/status"):
        assert get(proxy.port, "/_myproxy" + path)[0] == 200, path


def test_a_refusal_is_logged_limited_rate_and_counted_by_route(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], rate_limit=HOURLY))
    for _ in range(3):
        get(proxy.port, "/counted")
    assert wait_until(lambda: proxy.output.count("limited=rate") >= 2, timeout=5)
    assert re.findall(r"status=(\d+) .*limited=rate", proxy.output) == ["429", "429"]
    metrics = get(proxy.port, "/_myproxy/metrics")[2].decode()
    assert 'myproxy_rate_limited_total{route="default"} 2.0' in metrics


def test_client_ip_is_the_address_after_trusted_proxies_only(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], rate_limit={"rate": "1/h"}))
    assert get(proxy.port, "/", "X-Forwarded-For: 192.0.2.1\r\n")[0] == 200
    # An untrusted client's X-Forwarded-For changes nothing: it is still 127.0.0.1.
    assert get(proxy.port, "/", "X-Forwarded-For: 192.0.2.2\r\n")[0] == 429
    proxy.stop()
    proxy = start_proxy(base_config([backend.url], rate_limit={"rate": "1/h"},
                                    forwarded={"trusted_proxies": ["127.0.0.0/8"]}))
    assert get(proxy.port, "/", "X-Forwarded-For: 192.0.2.1\r\n")[0] == 200
    assert get(proxy.port, "/", "X-Forwarded-For: 192.0.2.2\r\n")[0] == 200
    assert get(proxy.port, "/", "X-Forwarded-For: 192.0.2.1\r\n")[0] == 429
    assert get(proxy.port, "/", "X-Forwarded-For: 192.0.2.2, 127.0.0.9\r\n")[0] == 429


def test_a_header_key_limits_each_value_and_requests_without_it_share_one(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url],
                                    rate_limit={"rate": "1/h", "key": "header:X-Api-Key"}))
    assert [get(proxy.port, "/", headers)[0] for headers in
            ("X-Api-Key: a\r\n", "X-Api-Key: b\r\n", "X-Api-Key: a\r\n", "", "")] == \
        [200, 200, 429, 200, 429]


def test_each_route_has_its_own_limit_over_the_top_levels(start_proxy, backends):
    a, b, _ = backends
    config = base_config([a.url], rate_limit={"rate": "1/h", "key": "route"}, routes=[
        {"name": "api", "path": "/api", "backends": [b.url], "rate_limit": {"burst": 2}},
        {"name": "open", "path": "/open", "backends": [b.url], "rate_limit": {"rate": 0}},
    ])
    proxy = start_proxy(config)
    assert [get(proxy.port, "/api/x")[0] for _ in range(4)] == [200, 200, 200, 429]
    assert [get(proxy.port, "/")[0] for _ in range(2)] == [200, 429]
    assert [get(proxy.port, "/open")[0] for _ in range(5)] == [200] * 5


def test_sighup_changes_the_limit_in_place_and_keeps_the_state_of_each_key(start_proxy,
                                                                           write_config, backend):
    proxy = start_proxy(base_config([backend.url], rate_limit=HOURLY))
    assert [get(proxy.port)[0] for _ in range(2)] == [200, 429]
    write_config(base_config([backend.url], rate_limit={**HOURLY, "burst": 1}))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for(r"config reloaded: .*rate_limit.burst 0->1")
    # The key's first request still counts: one more now, not two (a fresh key's burst).
    assert [get(proxy.port)[0] for _ in range(2)] == [200, 429]
    write_config(base_config([backend.url]))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for(r"config reloaded: .*rate_limit.rate 1/h->0")
    assert [get(proxy.port)[0] for _ in range(3)] == [200] * 3


# -- a gunicorn group: one limit for all its workers ----------------------------------------


@pytest.mark.parametrize("fresh, connections", [(False, 1), (True, 4)], ids=["one-connection",
                                                                              "many-connections"])
def test_gunicorn_the_group_gets_the_rate_once_not_once_per_worker(start_gunicorn, backend,
                                                                   fresh, connections):
    proxy = start_gunicorn(base_config([backend.url], rate_limit={"rate": "20/s", "burst": 5}),
                           workers=3)
    counts, elapsed = flood(proxy.port, 3.0, connections=connections, fresh=fresh)
    assert_rate(counts, elapsed, 20, 5)
    if fresh:      # the requests were spread: more than one worker answered
        pids = set(re.findall(r"\[(\d+)\] .*target=/flood", proxy.output)) or \
            set(re.findall(r"pid=(\d+) .*target=/flood", proxy.output))
        assert len(pids) >= 2, proxy.output[-2000:]


def test_gunicorn_a_worker_killed_and_replaced_forgets_no_key(start_gunicorn, backend):
    proxy = start_gunicorn(base_config([backend.url], rate_limit={**HOURLY, "burst": 2}),
                           workers=2)
    assert [get(proxy.port)[0] for _ in range(4)] == [200, 200, 200, 429]
    workers = set(re.findall(r"worker (\d+) ready", proxy.output))
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    assert wait_until(lambda: len(set(re.findall(r"worker (\d+) ready", proxy.output))) == 4,
                      timeout=15), proxy.output
    assert wait_until(lambda: get(proxy.port)[0] == 429, timeout=5)
    assert [get(proxy.port)[0] for _ in range(6)] == [429] * 6
