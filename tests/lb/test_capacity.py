"""max_conns and the queue (SPEC §8): the pool's ``Capacity`` with plain asserts (no I/O),
then over real sockets through the proxy, where a backend counts how many requests it holds
at once."""
import json
import logging

import gevent
import pytest
import yaml

from app.config import BackendConfig, QueueConfig, parse
from app.errors import NoBackendAvailable, QueueRejected
from app.lb.balancer import Balancer
from app.lb.capacity import Capacity
from app.wire.watch import ClientAborted
from tests.backends import TestBackend, free_port, wait_until
from tests.conftest import base_config
from tests.rawclient import connect, request


def capacity(caps, size=10, timeout=5.0, policy="round_robin"):
    configs = [BackendConfig(f"http://10.0.0.{i}:80", max_conns=cap) for i, cap in enumerate(caps)]
    balancer = Balancer.from_configs(configs, policy, probed=False)
    return Capacity("api", balancer, QueueConfig(size, timeout))


# -- the pool's capacity, no I/O ------------------------------------------------------------


def test_a_backend_at_its_cap_is_skipped_by_every_policy():
    for policy in ("round_robin", "least_connections", "random_two", "hash"):
        pool = capacity([1, 0], policy=policy)
        first, second = pool.balancer.backends
        assert pool.acquire("k", exclude=[second]) is first      # now at its cap
        for key in "abcdefgh":
            assert pool.acquire(key) is second, policy
        assert (first.in_flight, second.in_flight) == (1, 8)


def test_a_full_pool_queues_and_a_freed_slot_goes_to_the_first_waiter():
    pool = capacity([1])
    backend = pool.acquire()
    waiters = [gevent.spawn(pool.acquire) for _ in range(3)]
    gevent.sleep(0)
    assert pool.depth == 3 and backend.in_flight == 1
    pool.release(backend)                 # handed over: still one in flight
    gevent.sleep(0)
    assert backend.in_flight == 1 and pool.depth == 2
    assert waiters[0].ready() and not waiters[1].ready() and not waiters[2].ready()
    for waiter in waiters[1:]:
        pool.release(backend)
        waiter.join(timeout=1)
        assert waiter.ready()
    pool.release(backend)
    assert backend.in_flight == 0 and pool.depth == 0


def test_a_full_queue_and_a_wait_past_the_timeout_are_refused():
    pool = capacity([1], size=1, timeout=0.05)
    pool.acquire()
    rejected = []
    pool.rejected = rejected.append
    waiter = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    with pytest.raises(QueueRejected) as full:
        pool.acquire()
    assert full.value.reason_code == "full" and full.value.status == 503
    waiter.join(timeout=2)
    assert isinstance(waiter.exception, QueueRejected)
    assert waiter.exception.reason_code == "timeout"
    assert rejected == ["full", "timeout"]
    assert pool.depth == 0


def test_no_queue_means_a_503_at_once():
    pool = capacity([1], size=0)
    pool.acquire()
    with pytest.raises(QueueRejected):
        pool.acquire()


def test_a_retry_waits_only_for_a_backend_it_has_not_tried():
    pool = capacity([1, 1])
    first, second = pool.acquire(), pool.acquire()
    retry = gevent.spawn(pool.acquire, None, [first])     # first failed it: not again
    newcomer = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    pool.release(first)                   # the retry may not take it: the newcomer does
    newcomer.join(timeout=1)
    assert newcomer.value is first and not retry.ready()
    pool.release(second)
    retry.join(timeout=1)
    assert retry.value is second


def test_a_waiter_thrown_out_of_the_queue_leaves_it_and_takes_no_slot():
    pool = capacity([1])
    backend = pool.acquire()
    waiter = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    waiter.kill(ClientAborted)
    assert pool.depth == 0
    pool.release(backend)
    assert backend.in_flight == 0


def test_a_reload_that_raises_the_cap_serves_the_waiters_at_once():
    pool = capacity([1])
    backend = pool.acquire()
    waiter = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    balancer = pool.balancer.successor([BackendConfig(backend.url, max_conns=2)], "round_robin",
                                       probed=False)
    pool.follow(balancer, QueueConfig(10, 5.0))
    waiter.join(timeout=1)
    assert waiter.value is backend and backend.in_flight == 2


def test_closing_answers_every_waiter_and_nothing_waits_after():
    pool = capacity([1])
    pool.acquire()
    waiter = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    pool.close()
    waiter.join(timeout=1)
    assert waiter.exception.reason_code == "shutdown"
    with pytest.raises(QueueRejected):
        pool.acquire()


def test_a_sticky_request_takes_a_slot_on_its_own_backend_or_waits_for_that_one_alone():
    pool = capacity([1, 1])
    bound, other = pool.balancer.backends
    assert pool.acquire_bound(bound) is bound and bound.in_flight == 1
    taken_other = pool.acquire(exclude=[bound])
    waiter = gevent.spawn(pool.acquire_bound, bound)
    gevent.sleep(0)
    assert pool.depth == 1
    pool.release(taken_other)             # a slot on another backend: not the one it waits for
    gevent.sleep(0)
    assert not waiter.ready() and other.in_flight == 0
    pool.release(bound)
    waiter.join(timeout=1)
    assert waiter.value is bound and bound.in_flight == 1


def test_a_sticky_request_is_balanced_anew_when_its_backend_is_full_with_the_queue_full():
    pool = capacity([1, 0], size=1)
    bound, free = pool.balancer.backends
    pool.acquire_bound(bound)
    waiter = gevent.spawn(pool.acquire, None, [free])      # the queue's one place
    gevent.sleep(0)
    assert pool.acquire_bound(bound) is None
    waiter.kill()


def test_a_sticky_request_to_a_full_drained_backend_is_balanced_anew():
    pool = capacity([1, 0])
    bound, _ = pool.balancer.backends
    pool.acquire_bound(bound)
    bound.admin_state = "drain"
    assert pool.acquire_bound(bound) is None and pool.depth == 0


def test_without_caps_a_sticky_request_is_counted_in_flight():
    pool = capacity([0, 0])
    bound, _ = pool.balancer.backends
    assert pool.acquire_bound(bound) is bound and bound.in_flight == 1


def test_a_waiter_whose_backends_all_went_down_gets_no_backend():
    pool = capacity([1])
    backend = pool.acquire()
    waiter = gevent.spawn(pool.acquire)
    gevent.sleep(0)
    backend.healthy = False
    pool.release(backend)
    waiter.join(timeout=1)
    assert isinstance(waiter.exception, NoBackendAvailable)


# -- through the proxy, real sockets --------------------------------------------------------


class Counting(TestBackend):
    """A backend that counts the requests it holds at once (``most``)."""

    def __init__(self, name="b"):
        super().__init__(name)
        self.now = self.most = 0

    def app(self, environ, start_response):
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return list(super().app(environ, start_response))
        finally:
            self.now -= 1


@pytest.fixture
def counting():
    backends = []

    def start(name="b"):
        backend = Counting(name).start()
        backends.append(backend)
        return backend

    yield start
    for backend in backends:
        backend.release.set()
        backend.stop()


@pytest.fixture
def proxy(serve):
    """The in-process proxy (``serve``), its health checks off unless a test says."""
    def start(backends, **overrides):
        overrides.setdefault("health_check", {"enabled": False})
        return serve(backends, **overrides)
    return start


def get(port, target="/wait"):
    return request(port, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())


def test_the_backend_never_holds_more_than_max_conns_and_every_queued_request_is_served(
        proxy, counting, caplog):
    caplog.set_level(logging.INFO, logger="myproxy.access")
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 2}], queue={"size": 10, "timeout": "5s"})
    clients = [gevent.spawn(get, app.port) for _ in range(8)]
    assert wait_until(lambda: app.pool.capacity.depth == 6, timeout=5)
    assert len(backend.requests) == 2
    backend.release.set()
    gevent.joinall(clients, timeout=10)
    assert [client.value[0] for client in clients] == [200] * 8
    assert backend.most == 2
    queued = [record for record in caplog.records if "queued_ms" in record.getMessage()]
    assert len(queued) == 6


def test_a_full_queue_answers_503_naming_the_route_and_the_queue_never_the_backend(
        proxy, counting):
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 1}], queue={"size": 1, "timeout": "5s"},
                expose_backends=True)
    held = [gevent.spawn(get, app.port) for _ in range(2)]
    assert wait_until(lambda: app.pool.capacity.depth == 1, timeout=5)
    status, headers, body = get(app.port)
    assert status == 503 and headers["retry-after"] == "1"
    assert b"route=default" in body and b"queue" in body
    assert backend.url.encode() not in body and b"127.0.0.1" not in body
    backend.release.set()
    gevent.joinall(held, timeout=10)
    assert [client.value[0] for client in held] == [200, 200]
    metrics = app.metrics.exposition()[0].decode()
    assert 'myproxy_queue_rejected_total{reason="full",route="default"} 1.0' in metrics
    assert f'myproxy_backend_max_conns{{backend="{backend.url}",route="default"}} 1.0' in metrics


def test_a_wait_past_queue_timeout_answers_503(proxy, counting):
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 1}], queue={"size": 5, "timeout": "200ms"})
    held = gevent.spawn(get, app.port)
    assert wait_until(lambda: len(backend.requests) == 1, timeout=5)
    status, headers, body = get(app.port)
    assert status == 503 and "retry-after" in headers and b"queue.timeout" in body
    backend.release.set()
    held.join(timeout=5)
    metrics = app.metrics.exposition()[0].decode()
    assert 'myproxy_queue_rejected_total{reason="timeout",route="default"} 1.0' in metrics
    assert 'myproxy_queue_wait_seconds_count{route="default"} 1.0' in metrics


def test_a_client_that_leaves_while_queued_leaves_the_queue_at_once(proxy, counting):
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 1}], queue={"size": 5, "timeout": "10s"})
    held = gevent.spawn(get, app.port)
    assert wait_until(lambda: len(backend.requests) == 1, timeout=5)
    sock = connect(app.port)
    sock.sendall(b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
    assert wait_until(lambda: app.pool.capacity.depth == 1, timeout=5)
    sock.close()
    assert wait_until(lambda: app.pool.capacity.depth == 0, timeout=2)
    backend.release.set()
    held.join(timeout=5)
    assert [seen.target for seen in backend.requests] == ["/wait"]    # its slot never taken
    assert app.pool.backends[0].in_flight == 0


def test_queued_requests_keep_waiting_over_a_reload_that_changes_the_cap(proxy, counting):
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 1}], queue={"size": 5, "timeout": "10s"})
    clients = [gevent.spawn(get, app.port) for _ in range(3)]
    assert wait_until(lambda: app.pool.capacity.depth == 2, timeout=5)
    app.reload(parse(yaml.safe_dump(base_config(
        [{"url": backend.url, "max_conns": 3}], health_check={"enabled": False})), environ={}))
    assert wait_until(lambda: len(backend.requests) == 3, timeout=2)
    assert app.pool.capacity.depth == 0
    backend.release.set()
    gevent.joinall(clients, timeout=5)
    assert [client.value[0] for client in clients] == [200] * 3


def test_a_drain_answers_the_queued_requests_503(proxy, counting):
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 1}], queue={"size": 5, "timeout": "10s"})
    held = gevent.spawn(get, app.port)
    assert wait_until(lambda: len(backend.requests) == 1, timeout=5)
    queued = gevent.spawn(get, app.port)
    assert wait_until(lambda: app.pool.capacity.depth == 1, timeout=5)
    app.drain_queues()
    queued.join(timeout=2)
    assert queued.value[0] == 503 and b"shutting down" in queued.value[2]
    backend.release.set()
    held.join(timeout=5)
    assert held.value[0] == 200


def test_status_shows_in_flight_of_the_cap_and_the_queue(proxy, counting):
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 1}], queue={"size": 5, "timeout": "10s"})
    clients = [gevent.spawn(get, app.port) for _ in range(2)]
    assert wait_until(lambda: app.pool.capacity.depth == 1, timeout=5)
    status, _, body = request(app.port, b"GET /_myproxy/status HTTP/1.1\r\nHost: t\r\n"
                                        b"Connection: close\r\n\r\n")
    document = json.loads(body)
    row = document["backends"][0]
    assert (row["in_flight"], row["max_conns"]) == (1, 1)
    assert document["routes"][0]["queue"] == {"depth": 1, "size": 5, "timeout_seconds": 10.0}
    backend.release.set()
    gevent.joinall(clients, timeout=5)


def test_health_checks_do_not_take_slots(proxy, counting):
    backend = counting()
    app = proxy([{"url": backend.url, "max_conns": 1}], queue={"size": 0, "timeout": "1s"})
    held = gevent.spawn(get, app.port)
    assert wait_until(lambda: len(backend.requests) == 1, timeout=5)
    app.pool.health.check_once()          # goes to the backend though it is at its cap
    assert len(backend.requests) == 2 and app.pool.backends[0].in_flight == 1
    backend.release.set()
    held.join(timeout=5)


def test_a_retry_takes_a_slot_like_a_first_try(proxy, counting):
    busy = counting("busy")
    refused = f"http://127.0.0.1:{free_port()}"
    app = proxy([{"url": busy.url, "max_conns": 1}, {"url": refused, "max_conns": 1}],
                queue={"size": 5, "timeout": "5s"}, passive_health={"failures": 0})
    held = gevent.spawn(get, app.port)          # round-robin: the busy backend, held
    assert wait_until(lambda: len(busy.requests) == 1, timeout=5)
    retried = gevent.spawn(get, app.port, "/")  # refused, then waits for the busy one's slot
    assert wait_until(lambda: app.pool.capacity.depth == 1, timeout=5)
    assert busy.most == 1
    busy.release.set()
    gevent.joinall([held, retried], timeout=5)
    assert retried.value[0] == 200 and busy.most == 1
    assert [seen.target for seen in busy.requests] == ["/wait", "/"]
