"""The same app under ``gunicorn -k gevent wsgi:application``, over real sockets."""
import os
import shutil
import signal
import sys

import pytest

from tests.backends import free_port, wait_until
from tests.conftest import ProxyProcess, base_config
from tests.wire import connect, get, read_response

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")


@pytest.fixture
def start_gunicorn(write_config):
    started = []

    def start(config, env=None):
        path = write_config(config)
        port = free_port()
        process = ProxyProcess([GUNICORN, "-k", "gevent", "wsgi:application"],
                               env={"MYPROXY_CONFIG": path, "PORT": str(port), **(env or {})})
        started.append(process)
        process.wait_for(r"Booting worker")
        process.port = port
        assert wait_until(lambda: _accepts(port), timeout=10)
        return process

    yield start
    for process in started:
        process.stop()


def _accepts(port):
    try:
        connect(port, timeout=1).close()
        return True
    except OSError:
        return False


def test_gunicorn_proxies_with_round_robin(start_gunicorn, backends):
    proxy = start_gunicorn(base_config(b.url for b in backends))
    bodies = [get(proxy.port)[2] for _ in range(3)]
    assert sorted(bodies) == [b"backend a", b"backend b", b"backend c"]
    assert bodies[0] != bodies[1] != bodies[2]


def test_gunicorn_worker_runs_health_checks(start_gunicorn, backend):
    proxy = start_gunicorn(base_config([backend.url], health_check={"path": "/health-probe"}))
    assert wait_until(lambda: any(r.target == "/health-probe" for r in backend.requests), timeout=5)


def test_gunicorn_forwards_the_raw_target(start_gunicorn, backend):
    proxy = start_gunicorn(base_config([backend.url]))
    get(proxy.port, "/a%2Fb/../c?q=%zz")
    assert "/a%2Fb/../c?q=%zz" in [r.target for r in backend.requests]   # health checks interleave


def test_gunicorn_sigterm_lets_an_in_flight_request_finish(start_gunicorn, backend):
    proxy = start_gunicorn(base_config([backend.url]))
    sock = connect(proxy.port)
    sock.sendall(b"GET /slow?seconds=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: any(r.target.startswith("/slow") for r in backend.requests), timeout=5)
    proxy.signal(signal.SIGTERM)
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"slow solo")
    sock.close()
    assert proxy.wait(timeout=15) == 0
