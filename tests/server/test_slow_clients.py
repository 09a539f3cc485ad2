"""Slow and stalled clients are cut off, under ``python wsgi.py`` and gunicorn, so that many
of them at once do not stop normal traffic. Timeouts here are 1 s; waits are bounded."""
import re
import socket
import time

import gevent
import pytest

from app.server.connection import header_deadline
from tests.backends import wait_until
from tests.conftest import base_config
from tests.rawbackend import OK, RawBackend, read_until_closed
from tests.servers import SERVERS, serving
from tests.rawclient import connect, get, read_response

PIECE = b"x" * 65536


def respond(received):
    if received.target == "/huge":           # 64 MiB, far more than socket buffers hold
        return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1024 * len(PIECE))] + \
            [PIECE] * 1024
    return OK


@pytest.fixture(scope="module")
def raw():
    backend = RawBackend(respond).start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, raw, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [raw.url], health_check={"enabled": False},
            timeouts={"client_header": "1s", "client_idle": "1s"})) as process:
        yield process


def closed_within(sock, seconds: float) -> bool:
    """True if the proxy closes ``sock`` (sending nothing) within ``seconds``."""
    try:
        return read_until_closed(sock, timeout=seconds) == b""
    except socket.timeout:
        return False


@pytest.mark.parametrize("after_a_request", [False, True], ids=["first", "keep-alive"])
def test_slowloris_headers_are_cut_off(proxy, after_a_request):
    with connect(proxy.port) as sock:
        if after_a_request:     # the head deadline also holds for a later request's head
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")

        def drip():
            for _ in range(40):               # a header byte every 0.1 s, for up to 4 s
                gevent.sleep(0.1)
                sock.sendall(b"X")
        dripper = gevent.spawn(drip)
        try:
            assert closed_within(sock, 3.5)
        finally:
            dripper.kill()


def test_connection_that_sends_nothing_is_closed(proxy):
    with connect(proxy.port) as sock:
        assert closed_within(sock, 3.5)


def test_idle_keep_alive_connection_is_closed(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert closed_within(sock, 3.5)


def test_client_that_stops_reading_is_cut_off(proxy, raw):
    before = raw.broken_writes
    with connect(proxy.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
        # Never read: the proxy gives up on the client, then drops the backend's response.
        assert wait_until(lambda: raw.broken_writes > before, timeout=20)


def test_a_thousand_slow_clients_do_not_stop_normal_traffic(proxy):
    slow = []
    try:
        for index in range(1000):
            sock = connect(proxy.port)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " if index % 2 else b"")
            slow.append(sock)
        assert get(proxy.port)[0] == 200     # served while all 1,000 are still open
        pending = list(slow)
        with gevent.Timeout(15, False):
            while pending:
                pending = [s for s in pending if not closed_within(s, 0.01)]
        assert not pending, f"{len(pending)} of 1000 slow connections still open"
        assert get(proxy.port)[0] == 200
    finally:
        for sock in slow:
            sock.close()


def test_client_that_stops_sending_its_body_is_cut_off(proxy, raw):
    before = len(raw.received)
    with connect(proxy.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        data = read_until_closed(sock, timeout=5)
    if proxy.kind == "gunicorn-gevent":
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")   # it may close without an answer
    else:
        assert data.startswith(b"HTTP/1.1 408 ")
    assert len(raw.received) == before


@pytest.mark.parametrize("server", SERVERS)
def test_a_slowloris_burst_is_closed_over_a_spread_and_logged_as_one_line(server, raw,
                                                                        tmp_path_factory):
    with serving(server, tmp_path_factory, base_config(
            [raw.url], health_check={"enabled": False},
            timeouts={"client_header": "1s", "client_idle": "5s"})) as proxy:
        slow = [connect(proxy.port) for _ in range(200)]
        try:
            for sock in slow:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            opened = time.monotonic()
            latencies = []
            while time.monotonic() - opened < 1.5:      # across the moment they time out
                started = time.monotonic()
                assert get(proxy.port)[0] == 200
                latencies.append(time.monotonic() - started)
                gevent.sleep(0.02)
            pending = list(slow)
            with gevent.Timeout(10, False):
                while pending:
                    pending = [s for s in pending if not closed_within(s, 0.01)]
            assert not pending, f"{len(pending)} of 200 slow connections still open"
        finally:
            for sock in slow:
                sock.close()
        assert max(latencies) < 1.0, latencies
        if server == "wsgi.py":
            def counts():
                return [int(n) for n in re.findall(r"closed (\d+) connection\(s\) that sent no "
                                                   r"complete request head within 1\.0s",
                                                   proxy.output)]
            assert wait_until(lambda: sum(counts()) == 200, timeout=5), counts()
            assert len(counts()) <= 2, counts()
        # Not one line per connection (gunicorn logs none of these closes).
        assert proxy.output.count("no complete request head") <= 2, proxy.output[-3000:]


def test_each_head_deadline_is_up_to_5_percent_short_of_client_header():
    assert header_deadline(10.0, rand=lambda: 0.0) == 10.0
    assert header_deadline(10.0, rand=lambda: 1.0) == 9.5
    assert 9.5 <= header_deadline(10.0) <= 10.0
