"""Failover over real sockets: misbehaving backends, what the client gets, and how many
times each backend saw the request. The proxy runs in-process on a real pywsgi server
(health checks not started, so nothing happens between requests but the requests)."""
import logging
import socket

import gevent
import pytest

from app.lb.capacity import BUDGET_FLOOR
from tests.backends import TestBackend, free_port, wait_until
from tests.conftest import base_config
from tests.scripted import FullBacklog, ScriptedBackend
from tests.rawclient import connect, get, read_response, request

SMALL = b"k=v" * 100                 # kept for a replay
BIG = b"x" * (200 * 1024)            # over the 64 KiB replay limit


@pytest.fixture
def scripted():
    started = []

    def start(script="ok", name="scripted"):
        backend = ScriptedBackend(script, name).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def send(port, method="GET", target="/", body=b"", keep_alive=False):
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
    head += "" if keep_alive else "Connection: close\r\n"
    return request(port, head.encode() + b"\r\n" + body, head=method == "HEAD")


FAILURES = {"connect": "0.5s", "read": "1s"}


# (first backend's script, method, body, status the client gets, times the first and the
#  second backend saw the request). The first backend is tried first; "refused" is a port
#  nobody listens on.
CASES = [
    ("refused", "GET", b"", 200, None, 1),
    ("refused", "POST", SMALL, 200, None, 1),
    ("refused", "POST", BIG, 200, None, 1),
    ("accept-close", "GET", b"", 200, 0, 1),
    ("accept-close", "POST", SMALL, 502, 0, 0),
    ("close", "GET", b"", 200, 1, 1),
    ("close", "POST", SMALL, 502, 1, 0),
    ("reset", "GET", b"", 200, 1, 1),
    ("reset", "DELETE", b"", 200, 1, 1),
    ("reset", "POST", SMALL, 502, 1, 0),
    ("reset", "PATCH", SMALL, 502, 1, 0),
    ("reset-early", "PUT", SMALL, 200, 1, 1),
    ("reset-early", "PUT", BIG, 502, 1, 0),
    ("hang", "GET", b"", 200, 1, 1),
    ("hang", "POST", SMALL, 504, 1, 0),
    ("slow:0.2", "GET", b"", 200, 1, 0),
]


@pytest.mark.parametrize("script,method,body,status,first_saw,second_saw", CASES,
                         ids=[f"{c[0]}-{c[1]}-{len(c[2])}b" for c in CASES])
def test_a_misbehaving_backend(serve, scripted, script, method, body, status, first_saw,
                               second_saw):
    first = None if script == "refused" else scripted(script, "first")
    second = scripted("ok", "second")
    first_url = first.url if first else f"http://127.0.0.1:{free_port()}"
    proxy = serve([first_url, second.url], timeouts=FAILURES)
    got, _, answer = send(proxy.port, method, "/x", body)
    assert got == status, answer
    if first is not None:
        assert first.seen("/x") == first_saw
    assert second.seen("/x") == second_saw
    if second_saw:
        assert answer == b"second" and second.requests[-1].body == body
    if status == 200 and not second_saw:
        assert answer == b"first"


def test_a_post_that_reached_a_backend_is_never_sent_twice(serve, scripted):
    backends = [scripted("reset", f"b{i}") for i in range(3)]
    proxy = serve([b.url for b in backends], retries={"attempts": 3})
    for _ in range(6):
        assert send(proxy.port, "POST", "/pay", SMALL)[0] == 502
    assert [b.seen("/pay") for b in backends] == [2, 2, 2]


def test_idempotent_requests_try_each_backend_once_up_to_attempts(serve, scripted):
    backends = [scripted("reset", f"b{i}") for i in range(3)]
    proxy = serve([b.url for b in backends], retries={"attempts": 3})
    status, _, body = send(proxy.port, "GET", "/x")
    assert status == 502 and b"the backend failed" in body
    assert [b.seen("/x") for b in backends] == [1, 1, 1]


def test_attempts_1_means_no_retry(serve, scripted):
    first, second = scripted("reset", "first"), scripted("ok", "second")
    proxy = serve([first.url, second.url], retries={"attempts": 1})
    assert send(proxy.port, "GET", "/x")[0] == 502
    assert (first.seen(), second.seen()) == (1, 0)


def test_connect_timeout_is_504_or_a_retry_for_any_method(serve, scripted):
    busy = FullBacklog()
    try:
        alone = serve([busy.url], timeouts={"connect": "300ms"}, retries={"attempts": 1})
        status, _, body = send(alone.port, "POST", "/x", SMALL)
        assert status == 504 and b"did not accept the connection in time" in body
        good = scripted("ok", "good")
        pair = serve([busy.url, good.url], timeouts={"connect": "300ms"})
        assert send(pair.port, "POST", "/x", SMALL)[2] == b"good"
        assert good.requests[-1].body == SMALL
    finally:
        busy.close()


def test_no_retry_once_the_response_has_started(serve, scripted):
    first, second = scripted("partial", "first"), scripted("ok", "second")
    proxy = serve([first.url, second.url])
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200 and headers["content-length"] == "100"
        assert body == b"x" * 10          # cut short, and the connection is closed
        assert sock.recv(1) == b""
    assert (first.seen(), second.seen()) == (1, 0)


def test_read_timeout_applies_between_body_reads(serve, scripted, caplog):
    stalled = scripted("stall", "stalled")
    proxy = serve([stalled.url], timeouts={"read": "300ms"})
    with caplog.at_level(logging.WARNING, logger="myproxy"), connect(proxy.port, timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 200 and body == b"x" * 10     # cut short: the connection was closed
    assert f"upstream error mid-body: backend={stalled.url} kind=timeout" in caplog.text


def test_a_stale_keep_alive_connection_is_retried_on_a_fresh_one(serve, scripted, caplog):
    # The backend closes a kept-alive connection just as the next request arrives.
    racy = scripted(lambda nth, on_connection: "ok" if on_connection == 0 else "close", "racy")
    proxy = serve([racy.url], retries={"attempts": 1})
    with caplog.at_level(logging.INFO, logger="myproxy"):
        assert send(proxy.port, "GET", "/one")[2] == b"racy"
        assert send(proxy.port, "GET", "/two")[0] == 200
    assert racy.seen("/two") == 2 and racy.connections == 2
    assert f"attempts=2 tried={racy.url}(stale),{racy.url}" in caplog.text


def test_stray_bytes_on_a_kept_alive_connection_send_a_get_again_on_a_fresh_one(
        serve, scripted, caplog):
    """What a backend wrote after a response (here read as the next response's head) is
    no answer to the next request: an idempotent one goes again on a fresh connection. A
    backend whose fresh connections answer garbage too is still a 502."""
    racy = scripted(lambda nth, on_connection: "ok" if on_connection == 0 else "garbage", "racy")
    proxy = serve([racy.url], retries={"attempts": 1})
    with caplog.at_level(logging.INFO, logger="myproxy"):
        assert send(proxy.port, "GET", "/one")[2] == b"racy"
        assert send(proxy.port, "GET", "/two")[:3:2] == (200, b"racy")
        assert send(proxy.port, "POST", "/pay", SMALL)[0] == 502     # never sent twice
    assert racy.seen("/two") == 2 and racy.seen("/pay") == 1
    assert f"attempts=2 tried={racy.url}(stale),{racy.url}" in caplog.text
    racy.script = "garbage"
    assert send(proxy.port, "GET", "/three")[0] == 502


def test_a_post_on_a_connection_closed_as_it_was_sent_is_not_replayed(serve, scripted):
    racy = scripted(lambda nth, on_connection: "ok" if on_connection == 0 else "close", "racy")
    proxy = serve([racy.url])
    assert send(proxy.port, "POST", "/one", SMALL)[0] == 200
    assert send(proxy.port, "POST", "/pay", SMALL)[0] == 502
    assert racy.seen("/pay") == 1


def test_a_connection_the_backend_closed_while_idle_is_never_used(serve, scripted):
    closing = scripted("ok-close", "closing")
    proxy = serve([closing.url], retries={"attempts": 1})
    for _ in range(3):
        assert send(proxy.port, "POST", "/pay", SMALL)[:3:2] == (200, b"closing")
    assert closing.seen("/pay") == 3 and closing.connections == 3


def test_failed_requests_eject_a_backend_and_later_requests_skip_it(serve, scripted, caplog):
    bad, good = scripted("reset", "bad"), scripted("ok", "good")
    proxy = serve([bad.url, good.url], passive_health={"failures": 2, "eject_for": "30s"})
    victim = proxy.balancer.find(bad.url)
    with caplog.at_level(logging.INFO, logger="myproxy"):
        for _ in range(8):
            assert send(proxy.port)[2] == b"good"
            if victim.state == "ejected":
                break
    assert victim.state == "ejected" and bad.seen() == 2
    assert f"backend ejected: backend={bad.url}" in caplog.text
    for _ in range(4):
        assert send(proxy.port)[2] == b"good"
    assert bad.seen() == 2


def test_an_ejected_backend_returns_when_a_check_passes_after_eject_for(serve, scripted):
    flaky, good = scripted("reset", "flaky"), scripted("ok", "good")
    proxy = serve([flaky.url, good.url], passive_health={"failures": 1, "eject_for": "200ms"})
    victim = proxy.balancer.find(flaky.url)
    assert send(proxy.port)[2] == b"good"
    assert victim.state == "ejected"
    flaky.script = "ok"
    proxy.health.check_once()
    assert victim.state == "ejected"          # the check passed, but eject_for is not over
    assert wait_until(lambda: proxy.balancer._clock() >= victim.ejected_until, timeout=5)
    proxy.health.check_once()
    assert victim.state == "up"
    assert {send(proxy.port)[2] for _ in range(4)} == {b"flaky", b"good"}


def test_statuses_the_application_sends_never_eject(serve, backend):
    other = TestBackend("other").start()
    try:
        proxy = serve([backend.url, other.url], passive_health={"failures": 1})
        for _ in range(6):
            assert send(proxy.port, "GET", "/status/500")[0] == 500
        assert [b.state for b in proxy.balancer.backends] == ["up", "up"]
        assert len(backend.requests) == 3 and len(other.requests) == 3
    finally:
        other.stop()


def test_the_retry_budget_caps_retries_at_its_floor(serve, scripted):
    # The only primary refuses; the backup answers retries until the budget is spent.
    backup = scripted("ok", "backup")
    refused = f"http://127.0.0.1:{free_port()}"
    proxy = serve([refused, {"url": backup.url, "backup": True}],
                  retries={"budget": 0}, passive_health={"failures": 0})
    statuses = [send(proxy.port)[0] for _ in range(BUDGET_FLOOR + 3)]
    assert statuses == [200] * BUDGET_FLOOR + [502] * 3
    assert backup.seen() == BUDGET_FLOOR


def test_least_connections_avoids_the_backend_with_a_request_in_flight(serve, backends):
    proxy = serve([b.url for b in backends], policy="least_connections")
    waiting = gevent.spawn(send, proxy.port, "GET", "/wait")
    assert wait_until(lambda: any(b.requests for b in backends), timeout=5)
    busy = next(b for b in backends if b.requests)
    bodies = [send(proxy.port)[2] for _ in range(6)]
    assert f"backend {busy.name}".encode() not in bodies
    busy.release.set()
    assert waiting.get(timeout=5)[0] == 200


def test_hash_on_a_header_sends_each_user_to_one_backend(serve, backends):
    proxy = serve([b.url for b in backends], policy="hash", hash_key="header:X-User")
    homes = {}
    for user in [f"user{i}" for i in range(12)] * 2:
        body = get(proxy.port, "/", f"X-User: {user}\r\n")[2]
        assert homes.setdefault(user, body) == body
    assert len(set(homes.values())) > 1


def test_the_access_log_names_every_backend_tried(start_proxy, backend):
    refused = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(base_config([refused, backend.url], health_check={"enabled": False}))
    assert get(proxy.port, "/x")[2] == b"backend solo"
    line = proxy.wait_for(r"myproxy.access .*target=/x .*").group(0)
    assert f"backend={backend.url} attempts=2 tried={refused}(connect),{backend.url}" in line


def test_a_client_that_stops_mid_upload_is_not_blamed_on_the_backend(serve, scripted):
    first, second = scripted("ok", "first"), scripted("ok", "second")
    proxy = serve([first.url, second.url], passive_health={"failures": 1})
    with connect(proxy.port) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1000)
    assert wait_until(lambda: first.connections, timeout=5)
    assert second.seen("/up") == 0                       # not retried elsewhere
    assert [b.state for b in proxy.balancer.backends] == ["up", "up"]
