"""Several instances through one real Redis (SPEC §10): shared rate limits, admin states and
ejections; Redis killed, slow to come back, behind a password or TLS. Each instance is a
``python wsgi.py`` (``tests.conftest.start_proxy``); Redis is Debian's ``redis-server``."""
import json
import subprocess
import sys
import time
import uuid

import gevent
import pytest

from tests.backends import free_port, wait_until
from tests.certs import make_certificate
from tests.conftest import base_config
from tests.lb.test_ratelimit_wire import flood
from tests.rawclient import get, request
from tests.redisserver import RedisServer, needs_redis

pytestmark = needs_redis
API = "/_myproxy/api/backends"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def clustered(urls, redis_url, prefix=None, **overrides):
    return base_config(urls, cluster={"redis": redis_url, "timeout": "50ms",
                                      "prefix": prefix or f"t{uuid.uuid4().hex[:8]}"},
                       **overrides)


def patch(port, body):
    data = json.dumps(body).encode()
    return request(port, f"PATCH {API} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)


def status(port):
    return json.loads(get(port, "/_myproxy/status")[2])


def backend_state(port, url):
    return next(b for b in status(port)["backends"] if b["url"] == url)


def metric(port, name):
    body = get(port, "/_myproxy/metrics")[2].decode()
    values = [line.split()[-1] for line in body.splitlines() if line.startswith(name + " ")]
    return float(values[0]) if values else None


def test_two_instances_share_one_rate_limit(start_proxy, backend, redis_server):
    config = clustered([backend.url], redis_server.url,
                       rate_limit={"rate": "20/s", "burst": 0, "key": "route"})
    one, two = start_proxy(config), start_proxy(config)
    results = []
    jobs = [gevent.spawn(lambda port=port: results.append(flood(port, 2.0)))
            for port in (one.port, two.port)]
    gevent.joinall(jobs, raise_error=True)
    admitted = sum(counts.get(200, 0) for counts, _ in results)
    elapsed = max(seconds for _, seconds in results)
    # One limit of 20/s for both: about 1 + 20 × 2 s, never the 2 × that of two limits.
    assert 0.8 * 20 * elapsed <= admitted <= 20 * elapsed + 3, (results, elapsed)
    assert all(counts.get(429, 0) > 0 for counts, _ in results)
    assert metric(one.port, "myproxy_cluster_up") == 1.0


def test_a_drain_sent_to_one_instance_holds_in_the_other_within_a_second_and_a_restart(
        start_proxy, backends, redis_server):
    a, b, _ = backends
    config = clustered([a.url, b.url], redis_server.url)
    one, two = start_proxy(config), start_proxy(config)
    assert patch(one.port, {"backend": b.url, "state": "drain"})[0] == 200
    sent = time.monotonic()
    assert wait_until(lambda: backend_state(two.port, b.url)["admin_state"] == "drain",
                      timeout=1.0, interval=0.05)
    assert time.monotonic() - sent < 1.0
    assert all(get(two.port, "/x")[0] == 200 for _ in range(6))
    # No request reached the drained one (its health checks go on, to "/": SPEC §9).
    assert [r for r in b.requests if r.target == "/x"] == []
    two.stop()
    three = start_proxy(config)                          # a restart starts with it
    assert backend_state(three.port, b.url)["admin_state"] == "drain"


def test_an_ejection_in_one_instance_is_avoided_by_the_other(start_proxy, backend, redis_server):
    dead = f"http://127.0.0.1:{free_port()}"             # refuses connections
    config = clustered([backend.url, dead], redis_server.url, health_check={"enabled": False},
                       passive_health={"failures": 1, "eject_for": "30s"})
    one, two = start_proxy(config), start_proxy(config)
    assert wait_until(lambda: get(one.port, "/x") and
                      backend_state(one.port, dead)["state"] == "ejected", timeout=5)
    assert wait_until(lambda: backend_state(two.port, dead)["state"] == "ejected", timeout=1.0,
                      interval=0.05)


def test_redis_killed_mid_load_fails_nothing_and_limits_stay_local(start_proxy, backend,
                                                                   own_redis):
    config = clustered([backend.url], own_redis.url,
                       rate_limit={"rate": "1/h", "burst": 0, "key": "client_ip"})
    proxy = start_proxy(config)
    assert get(proxy.port, "/x")[0] == 200
    assert get(proxy.port, "/x")[0] == 429                # the shared limit
    own_redis.stop()
    slowest, statuses = 0.0, []
    for _ in range(20):
        started = time.monotonic()
        statuses.append(get(proxy.port, "/x")[0])
        slowest = max(slowest, time.monotonic() - started)
    # Refused by the local limit in between (never no limit), each answer at once.
    assert statuses.count(200) <= 1 and set(statuses) <= {200, 429}, statuses
    assert slowest < 0.5, slowest
    assert metric(proxy.port, "myproxy_cluster_up") == 0.0
    answer = patch(proxy.port, {"backend": backend.url, "state": "drain"})
    assert answer[0] == 503 and b"Redis" in answer[2]        # not made here only
    assert proxy.output.count("cluster: Redis at") == 2      # answers, then failed: once
    assert "failed" in proxy.output
    own_redis.start()
    assert wait_until(lambda: "answers again" in proxy.output, timeout=5)
    assert metric(proxy.port, "myproxy_cluster_up") == 1.0
    assert proxy.output.count("answers again") == 1 and proxy.output.count("failed (") == 1


def test_a_password_in_the_url_works_and_is_never_shown(start_proxy, backend, tmp_path,
                                                        write_config):
    secret = "pw-" + uuid.uuid4().hex
    server = RedisServer(tmp_path, password=secret).start()
    try:
        config = clustered([backend.url], server.url,
                           rate_limit={"rate": "1/h", "burst": 0, "key": "route"})
        proxy = start_proxy(config)
        assert [get(proxy.port, "/x")[0] for _ in range(2)] == [200, 429]
        assert any(key.startswith(b"t") for key in server.client().keys("*:rl:*"))
        document = status(proxy.port)
        assert document["cluster"]["up"] is True
        assert ":***@" in document["cluster"]["redis"]
        assert secret not in json.dumps(document)
        check = subprocess.run([sys.executable, "wsgi.py", "--check", "--config",
                                write_config(config, "check.yaml")], capture_output=True,
                               text=True, timeout=30)
        assert "cluster.redis" in check.stdout and secret not in check.stdout + check.stderr
        server.stop()
        assert wait_until(lambda: "failed (" in proxy.output, timeout=5)   # the loop's round
        assert secret not in proxy.output
    finally:
        server.stop()


def test_a_wrong_password_leaves_each_instance_on_its_own(start_proxy, backend, tmp_path):
    server = RedisServer(tmp_path, password="right").start()
    try:
        url = server.url.replace(":right@", ":wrong@")
        proxy = start_proxy(clustered([backend.url], url,
                                      rate_limit={"rate": "1/h", "burst": 0, "key": "route"}))
        assert [get(proxy.port, "/x")[0] for _ in range(2)] == [200, 429]   # the local limit
        assert metric(proxy.port, "myproxy_cluster_up") == 0.0
        assert "wrong" not in proxy.output and "failed" in proxy.output
    finally:
        server.stop()


def test_rediss_speaks_tls_to_a_tls_redis(start_proxy, backend, tmp_path):
    cert = make_certificate(tmp_path, "redis", ["localhost"])
    server = RedisServer(tmp_path, tls=cert).start()
    try:
        verified = start_proxy(clustered([backend.url], server.url))     # not a trusted CA
        assert metric(verified.port, "myproxy_cluster_up") == 0.0
        assert get(verified.port, "/x")[0] == 200
        trusted = start_proxy(clustered([backend.url], server.url + "?ssl_cert_reqs=none",
                                        rate_limit={"rate": "1/h", "burst": 0, "key": "route"}))
        assert metric(trusted.port, "myproxy_cluster_up") == 1.0
        assert [get(trusted.port, "/x")[0] for _ in range(2)] == [200, 429]
        assert server.client().keys("*:rl:*")
    finally:
        server.stop()


def test_a_gunicorn_group_takes_an_ejection_in_every_worker_and_shares_a_drain(
        start_proxy, backends, redis_server, write_config):
    from tests.servers import launch
    a, b, _ = backends
    dead = f"http://127.0.0.1:{free_port()}"
    config = clustered([a.url, b.url, dead], redis_server.url, health_check={"enabled": False},
                       passive_health={"failures": 1, "eject_for": "30s"})
    alone = start_proxy(config)
    group = launch("gunicorn", write_config(config, "group.yaml"), workers=2)
    try:
        assert patch(group.port, {"backend": b.url, "state": "drain"})[0] == 200
        assert wait_until(lambda: backend_state(alone.port, b.url)["admin_state"] == "drain",
                          timeout=1.0, interval=0.05)
        assert wait_until(lambda: get(alone.port, "/x") and
                          backend_state(alone.port, dead)["state"] == "ejected", timeout=5)
        # Every worker (each /status is the worker that answers it) has it out.
        assert wait_until(lambda: all(backend_state(group.port, dead)["state"] == "ejected"
                                      for _ in range(6)), timeout=2.0, interval=0.05)
    finally:
        group.stop()
    assert "Traceback" not in group.output, group.output
