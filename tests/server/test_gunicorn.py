"""The same app under gunicorn, started with the Procfile's ``web`` command, over real sockets."""
import json
import re
import time
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys

import gevent
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.backends import free_port, wait_until
from tests.conftest import ROOT, ProxyProcess, base_config
from tests.rawclient import connect, get, read_response

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")


def procfile_web_command() -> list[str]:
    """The Procfile's ``web`` process, with this virtualenv's gunicorn."""
    with open(os.path.join(ROOT, "Procfile")) as procfile:
        line = next(line for line in procfile if line.startswith("web:"))
    command = shlex.split(line[len("web:"):])
    assert command[0] == "gunicorn"
    return [GUNICORN, *command[1:]]


@pytest.fixture
def start_gunicorn(write_config):
    started = []

    def start(config, env=None, args=(), workers=1, kind="gunicorn"):
        """``kind``: "gunicorn" (the Procfile's, MyProxy's worker) or "gunicorn-gevent"
        (the same command with ``-k gevent``: gunicorn's stock gevent worker)."""
        path = write_config(config)
        port = free_port()
        stock = ["-k", "gevent"] if kind == "gunicorn-gevent" else []
        process = ProxyProcess([*procfile_web_command(), *stock, *args],
                               env={"MYPROXY_CONFIG": path, "PORT": str(port),
                                    "WEB_CONCURRENCY": str(workers), **(env or {})})
        started.append(process)
        assert wait_until(lambda: process.output.count("ready: SIGHUP reloads") >= workers,
                          timeout=15), process.output
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


WORKERS = ("gunicorn", "gunicorn-gevent")


@pytest.mark.parametrize("kind", WORKERS)
def test_gunicorn_sigterm_drains_as_python_wsgi_py_does(start_gunicorn, backend, kind):
    proxy = start_gunicorn(base_config([backend.url]), kind=kind)
    idle = connect(proxy.port)
    idle.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(idle)[0] == 200
    busy = connect(proxy.port)
    busy.sendall(b"GET /slow?seconds=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: any(r.target.startswith("/slow") for r in backend.requests), timeout=5)
    proxy.signal(signal.SIGTERM)
    proxy.wait_for("received SIGTERM: draining")
    idle.settimeout(1.5)                    # closed at once, not after keepalive (60 s)
    assert idle.recv(100) == b""
    status, headers, body = read_response(busy)
    assert (status, body) == (200, b"slow solo")
    assert headers.get("connection") == "close"
    assert busy.recv(100) == b""
    assert proxy.wait(timeout=10) == 0
    idle.close()
    busy.close()


@pytest.mark.parametrize("kind", WORKERS)
def test_gunicorn_sighup_reloads_in_each_worker_and_keeps_the_workers(start_gunicorn, write_config,
                                                                      backends, kind):
    a, b, _ = backends
    proxy = start_gunicorn(base_config([a.url]), workers=2, kind=kind)
    assert {get(proxy.port)[2] for _ in range(4)} == {b"backend a"}
    write_config(base_config([b.url]))
    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.output.count("config reloaded: +backend") == 2, timeout=10)
    assert {get(proxy.port)[2] for _ in range(6)} == {b"backend b"}
    path = write_config("backends: [\n")
    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.output.count("config reload refused") == 2, timeout=10)
    assert f"{path}:2:1: invalid YAML" in proxy.output
    assert {get(proxy.port)[2] for _ in range(6)} == {b"backend b"}
    assert proxy.output.count("Booting worker") == 2 and proxy.proc.poll() is None


def test_gunicorn_preload_gives_each_client_its_own_response(start_gunicorn, backend):
    proxy = start_gunicorn(base_config([backend.url]), args=["--preload"], workers=2)

    def client(number):
        with connect(proxy.port) as sock:
            for index in range(15):
                body = f"client {number} request {index}".encode()
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                status, _, echoed = read_response(sock)
                assert (status, echoed) == (200, body)
        return 15

    jobs = [gevent.spawn(client, number) for number in range(20)]
    gevent.joinall(jobs, timeout=60)
    assert [job.value for job in jobs] == [15] * 20, [job.exception for job in jobs]
    # The app was built in the master: each worker still has its own place in the group.
    assert wait_until(lambda: len(json.loads(get(proxy.port, "/_myproxy/status")[2])["workers"])
                      == 2, timeout=5)


@pytest.mark.parametrize("kind", WORKERS)
def test_gunicorn_https_upstreams_survive_the_import_order(start_gunicorn, backend, kind):
    """The master imports only app.config: requests imported before the worker's
    monkey-patching would turn every HTTPS upstream into a RecursionError (STACK-FACTS 12)."""
    https = backend.url.replace("http://", "https://")
    proxy = start_gunicorn(base_config([https], retries={"attempts": 1}, expose_backends=True,
                                       health_check={"enabled": False}), kind=kind)
    status, _, body = get(proxy.port)
    assert status == 502 and b"TLS handshake failed" in body   # a plain-HTTP port: the handshake fails
    assert b"RecursionError" not in body
    assert "MonkeyPatchWarning" not in proxy.output


def test_gunicorn_refuses_a_bad_config_at_start(write_config, tmp_path):
    path = write_config("backends:\n  - http://127.0.0.1:1\nprot: 1\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    process = ProxyProcess(procfile_web_command(), env={"MYPROXY_CONFIG": path,
                                                        "PORT": str(free_port()), "TMPDIR": str(temp)})
    assert process.wait(timeout=15) != 0
    assert f"myproxy: config error: {path}:3:1: prot: unknown key (did you mean `port`?)" \
        in process.output
    assert "Booting worker" not in process.output
    assert list(temp.iterdir()) == []        # the metrics directory it made is gone too


def test_gunicorn_workers_add_up_their_metrics(start_gunicorn, backend):
    proxy = start_gunicorn(base_config([backend.url]), workers=2)
    metrics_dir = proxy.wait_for(r"metrics of all workers add up in (\S+)").group(1)
    # Send until both workers have served some of the requests (/status lists each worker).
    served, sent = {}, 0
    deadline = time.monotonic() + 15          # the kernel may hand one worker most connections
    while sum(1 for count in served.values() if count) < 2 and time.monotonic() < deadline:
        for _ in range(10):
            assert get(proxy.port, "/")[0] == 200
            sent += 1
        document = json.loads(get(proxy.port, "/_myproxy/status")[2])
        served = {worker["pid"]: worker["requests"] for worker in document["workers"]}
    assert len(served) == 2 and all(served.values()), served
    for _ in range(4):                       # whichever worker answers the scrape
        text = get(proxy.port, "/_myproxy/metrics")[2].decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("myproxy_requests_total", (("backend", backend.url), ("code", "200"), ("route", "default")))] == sent
        assert samples[("myproxy_backend_up", (("backend", backend.url), ("route", "default")))] == 1
        assert samples[("myproxy_backend_in_flight", (("backend", backend.url), ("route", "default")))] == 0
    proxy.stop()
    assert not os.path.exists(metrics_dir)


@pytest.mark.parametrize("kind", WORKERS)
def test_gunicorn_reload_applies_client_idle_or_says_it_needs_a_restart(start_gunicorn, write_config,
                                                                        backend, kind):
    proxy = start_gunicorn(base_config([backend.url]), kind=kind)
    write_config(base_config([backend.url], timeouts={"client_idle": "1s"}))
    proxy.signal(signal.SIGHUP)
    line = proxy.wait_for(r"config reloaded: .*").group(0)
    applied, _, kept = line.partition("not applied, needs a restart")
    with connect(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.settimeout(3)
        if kind == "gunicorn":        # MyProxy's worker reads it per connection, as wsgi.py
            assert "timeouts.client_idle" in applied and "client_idle" not in kept
            assert sock.recv(1) == b""                        # closed after 1 s idle
        else:                         # the stock worker's keepalive was set at start
            assert "timeouts.client_idle" in kept
            with pytest.raises(TimeoutError):
                sock.recv(1)


def _views(proxy, workers: int, backend_url: str, state: str, timeout: float,
           key: str = "state") -> dict:
    """Ask /status on new connections until each of ``workers`` worker pids has answered
    that ``backend_url`` is in ``state`` (its row's ``key``: ``admin_state`` for drain and
    maint), and that the group has ``workers`` workers; return each pid's last document."""
    seen: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = json.loads(get(proxy.port, "/_myproxy/status")[2])
        row = next(r for r in document["backends"] if r["url"] == backend_url)
        if row[key] == state and len(document["workers"]) == workers:
            seen[document["pid"]] = document
        else:
            seen.pop(document["pid"], None)
        if len(seen) >= workers:
            break
    return seen


def test_gunicorn_workers_share_one_view_of_the_backends(start_gunicorn, backends):
    a, b, _ = backends
    proxy = start_gunicorn(base_config([a.url, b.url], health_check={"path": "/probe"},
                                       passive_health={"failures": 1}), workers=3)
    views = _views(proxy, 3, b.url, "up", timeout=10)
    assert len(views) == 3
    # One health checker for the group: about one probe per 200 ms interval, not three.
    probes = lambda: sum(1 for r in a.requests if r.target == "/probe")   # noqa: E731
    before = probes()
    gevent.sleep(2.0)                               # a rate is measured over time
    assert 4 <= probes() - before <= 15

    b.stop()
    proxy.wait_for(rf"backend down: backend={b.url}")
    assert len(_views(proxy, 3, b.url, "down", timeout=1.0)) == 3       # out in all within 1 s
    logged = len(proxy.output)
    for _ in range(30):
        assert get(proxy.port)[0] == 200
    assert f"backend={b.url}" not in proxy.output[logged:]     # no worker even tried it
    assert proxy.output.count(f"backend down: backend={b.url}") == 1   # checked by one worker

    b.restart()
    proxy.wait_for(rf"backend up: backend={b.url}")
    back = _views(proxy, 3, b.url, "up", timeout=1.0)
    assert len(back) == 3                                                # back in all together
    assert len({d["backends"][1]["since"] for d in back.values()}) == 1   # at the same moment

    # The leader dies: another worker leads, the replacement follows, nothing counted is lost.
    served = json.loads(get(proxy.port, "/_myproxy/status")[2])["totals"]["requests"]
    leader = int(proxy.wait_for(r"worker (\d+) leads the group").group(1))
    os.kill(leader, signal.SIGKILL)
    assert wait_until(lambda: len(re.findall(r"worker (\d+) leads the group", proxy.output)) == 2,
                      timeout=10)
    after = _views(proxy, 3, b.url, "up", timeout=10)
    assert len(after) == 3 and leader not in after
    assert all(d["totals"]["requests"] >= served for d in after.values())


def test_gunicorn_an_ejection_in_one_worker_is_seen_by_all(start_gunicorn, write_config, backends):
    a, b, _ = backends
    config = base_config([a.url, b.url], health_check={"interval": "1h", "timeout": "1s"},
                         passive_health={"failures": 1, "eject_for": "1s"})
    proxy = start_gunicorn(config, workers=3)
    assert len(_views(proxy, 3, b.url, "up", timeout=10)) == 3
    b.stop()
    for _ in range(20):                    # until the worker that tries b ejects it
        assert get(proxy.port)[0] == 200
        if "backend ejected" in proxy.output:
            break
    assert len(_views(proxy, 3, b.url, "ejected", timeout=1.0)) == 3    # out in all within 1 s
    logged = len(proxy.output)
    for _ in range(30):
        assert get(proxy.port)[0] == 200
    assert f"backend={b.url}" not in proxy.output[logged:]

    b.restart()
    gevent.sleep(1.0)                      # eject_for
    write_config(config)
    proxy.signal(signal.SIGHUP)            # a reload checks at once (the interval is 1 h)
    back = _views(proxy, 3, b.url, "up", timeout=3.0)
    assert len(back) == 3                                                # back in all together
    assert len({d["backends"][1]["since"] for d in back.values()}) == 1


def test_gunicorn_master_imports_no_requests_or_urllib3(tmp_path):
    """What the master imports (gunicorn.conf.py, the worker class, the group's modules)
    must not bring in requests or urllib3 before a worker's monkey-patching (STACK-FACTS 12)."""
    code = ("import runpy, sys; runpy.run_path('gunicorn.conf.py');"
            "import app.server.gunicorn_worker, app.server.gunicorn_master, app.server.group;"
            "print(sorted(m for m in ('requests', 'urllib3') if m in sys.modules))")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
           "MYPROXY_GROUP_DIR": str(tmp_path)}
    env.pop("MYPROXY_CONFIG", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.stdout.strip() == "[]", result.stderr


def test_gunicorn_worker_serves_tls_with_gunicorn_s_certificate_settings(start_gunicorn, backend,
                                                                          tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (Debian openssl; .ci/run installs it)")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    proxy = start_gunicorn(base_config([backend.url]), args=["--certfile", cert, "--keyfile", key])
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    with context.wrap_socket(connect(proxy.port), server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_response(sock)[:3:2] == (200, b"backend solo")


def test_gunicorn_worker_is_replaced_after_max_requests(start_gunicorn, backend):
    proxy = start_gunicorn(base_config([backend.url]), args=["--max-requests", "5"])
    for _ in range(8):
        assert get(proxy.port)[0] == 200
    proxy.wait_for(r"served max_requests \(5\), gunicorn starts another: draining")
    assert wait_until(lambda: proxy.output.count("Booting worker") == 2, timeout=10)
    assert wait_until(lambda: get(proxy.port)[0] == 200, timeout=10)


def _patch(port: int, change: dict) -> tuple[int, dict]:
    body = json.dumps(change).encode()
    sock = connect(port)
    sock.sendall(b"PATCH /_myproxy/api/backends HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    status, _, answer = read_response(sock)
    sock.close()
    return status, json.loads(answer)


def test_gunicorn_an_admin_change_holds_in_every_worker_within_a_second(start_gunicorn, write_config,
                                                                        backends):
    a, b, c = backends
    proxy = start_gunicorn(base_config([a.url, b.url]), workers=3)
    assert len(_views(proxy, 3, b.url, "up", timeout=10)) == 3
    # What a deploy waits on: the API's in-flight count is the group's, whichever worker answers.
    slow = connect(proxy.port)
    slow.sendall(b"GET /slow?seconds=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert wait_until(lambda: any(r.target.startswith("/slow") for r in a.requests + b.requests))
    busy = a.url if any(r.target.startswith("/slow") for r in a.requests) else b.url

    def in_flight() -> int:
        rows = json.loads(get(proxy.port, "/_myproxy/api/backends")[2])["backends"]
        return next(row["in_flight"] for row in rows if row["backend"] == busy)
    assert wait_until(lambda: all(in_flight() == 1 for _ in range(6)), timeout=1.5)
    assert read_response(slow)[0] == 200
    slow.close()

    status, entry = _patch(proxy.port, {"backend": b.url, "state": "drain"})
    assert (status, entry["admin_state"]) == (200, "drain")
    assert len(_views(proxy, 3, b.url, "drain", timeout=1.0, key="admin_state")) == 3
    proxy.wait_for(rf"admin change: action=drain route=default backend={b.url} state=ready->drain client=127")
    logged = len(proxy.output)
    for _ in range(30):
        assert get(proxy.port, "/x")[0] == 200
    assert f"backend={b.url}" not in proxy.output[logged:]      # no worker sent it one

    # A replaced worker starts with it.
    pids = set(_views(proxy, 3, b.url, "drain", timeout=5, key="admin_state"))
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: proxy.output.count("Booting worker") == 4, timeout=10)
    after = _views(proxy, 3, b.url, "drain", timeout=10, key="admin_state")
    assert len(after) == 3 and victim not in after

    # A reload through the API reaches every worker, and keeps the drain.
    write_config(base_config([a.url, b.url, c.url]))
    sock = connect(proxy.port)
    sock.sendall(b"POST /_myproxy/api/reload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    status, _, answer = read_response(sock)
    sock.close()
    assert (status, json.loads(answer)["changed"]) == (200, [f"+backend {c.url}"])
    assert wait_until(lambda: proxy.output.count(f"config reloaded: +backend {c.url}") == 3,
                      timeout=5), proxy.output
    assert len(_views(proxy, 3, b.url, "drain", timeout=2, key="admin_state")) == 3
    _patch(proxy.port, {"backend": b.url, "state": "ready"})
    assert len(_views(proxy, 3, b.url, "ready", timeout=1.0, key="admin_state")) == 3
