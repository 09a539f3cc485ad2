"""The shutdown sequence under both servers, with real processes: ``shutdown_delay`` (go on
accepting with ``/health`` 503 and ``Connection: close``), then the drain, then exit 0."""
import signal
import time

import pytest
import yaml

from tests.backends import wait_until
from tests.conftest import base_config
from tests.servers import SERVERS, launch
from tests.rawclient import connect, queue_depth, read_response

DELAY = 1.0          # short, but long enough to act inside it on a loaded machine
PLAIN_GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"      # keep-alive: the server decides


def refuses(port: int) -> bool:
    try:
        connect(port, timeout=1).close()
        return False
    except OSError:
        return True


@pytest.fixture
def start(tmp_path):
    started = []

    def start_server(kind, config):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        process = launch(kind, str(path))
        started.append(process)
        return process

    yield start_server
    for process in started:
        process.stop()


@pytest.mark.parametrize("kind", SERVERS)
def test_sigterm_goes_on_serving_for_shutdown_delay_then_drains_and_exits_0(start, backend, kind):
    proxy = start(kind, base_config([backend.url], shutdown_delay=f"{DELAY}s",
                                    shutdown_timeout="5s"))
    kept_alive = connect(proxy.port)
    kept_alive.sendall(PLAIN_GET)
    status, headers, _ = read_response(kept_alive)
    assert status == 200 and headers.get("connection") != "close"
    in_flight = connect(proxy.port)
    in_flight.sendall(b"GET /slow?seconds=3 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert wait_until(lambda: any(r.target.startswith("/slow") for r in backend.requests),
                      timeout=5)

    proxy.signal(signal.SIGTERM)
    signalled = time.monotonic()
    proxy.wait_for("shutdown_delay: accepting")
    with connect(proxy.port) as new:                 # accepted and served, then closed
        new.sendall(PLAIN_GET)
        status, headers, body = read_response(new)
        assert (status, body) == (200, b"backend solo")
        assert headers["connection"] == "close"
        assert new.recv(100) == b""
    with connect(proxy.port) as new:
        new.sendall(b"GET /_myproxy/health HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = read_response(new)
        assert (status, body) == (503, b"draining\n")
    kept_alive.sendall(PLAIN_GET)                    # its next request: answered, then closed
    status, headers, _ = read_response(kept_alive)
    assert status == 200 and headers["connection"] == "close"

    assert wait_until(lambda: refuses(proxy.port), timeout=5)
    assert time.monotonic() - signalled >= DELAY
    status, headers, body = read_response(in_flight)
    assert (status, body) == (200, b"slow solo")
    assert headers["connection"] == "close"
    assert proxy.wait(timeout=10) == 0
    kept_alive.close()
    in_flight.close()
    assert "Traceback" not in proxy.output


def test_a_second_signal_ends_the_delay_at_once(start, backend):
    proxy = start("wsgi.py", base_config([backend.url], shutdown_delay="30s"))
    proxy.signal(signal.SIGTERM)
    proxy.wait_for("shutdown_delay: accepting")
    proxy.signal(signal.SIGINT)
    assert proxy.wait(timeout=5) == 0
    assert "ending shutdown_delay now" in proxy.output


@pytest.mark.parametrize("kind", ["wsgi.py", "gunicorn"])
def test_a_drain_answers_queued_requests_503_at_once_and_lets_the_admitted_one_finish(
        start, backend, kind):
    proxy = start(kind, base_config([{"url": backend.url, "max_conns": 1}],
                                    queue={"size": 5, "timeout": "20s"}, shutdown_timeout="10s",
                                    health_check={"enabled": False}))
    admitted = connect(proxy.port)
    admitted.sendall(b"GET /slow?seconds=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert wait_until(lambda: any(r.target.startswith("/slow") for r in backend.requests),
                      timeout=5)
    queued = connect(proxy.port)
    queued.sendall(PLAIN_GET)
    assert wait_until(lambda: queue_depth(proxy.port) == 1, timeout=5)   # in the queue
    proxy.signal(signal.SIGTERM)
    signalled = time.monotonic()
    status, headers, body = read_response(queued)
    assert status == 503 and b"shutting down" in body and headers["retry-after"] == "5"
    assert time.monotonic() - signalled < 2          # not at shutdown_timeout
    status, _, body = read_response(admitted)
    assert (status, body) == (200, b"slow solo")
    assert proxy.wait(timeout=15) == 0
    assert [r.target for r in backend.requests] == ["/slow?seconds=2"]
    admitted.close()
    queued.close()
