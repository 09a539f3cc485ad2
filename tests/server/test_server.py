"""``python wsgi.py`` over real sockets: start-up, rotation, health, errors, and shutdown."""
import shutil
import signal
import socket
import sys

import gevent
import pytest

from tests.backends import TestBackend, free_port, wait_until
from tests.conftest import ProxyProcess, base_config
from tests.rawclient import connect, get, read_all, read_response, request


def test_startup_line_names_address_and_backends(start_proxy, backends):
    proxy = start_proxy(base_config(b.url for b in backends))
    line = proxy.wait_for(r"listening on .*").group(0)
    assert f"127.0.0.1:{proxy.port}" in line
    for backend in backends:
        assert backend.url in line


def test_round_robin_order_over_the_wire(start_proxy, backends):
    proxy = start_proxy(base_config(b.url for b in backends))
    bodies = [get(proxy.port)[2] for _ in range(6)]
    assert bodies == [b"backend a", b"backend b", b"backend c"] * 2


def test_access_log_line_per_request(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url]))
    status, headers, _ = get(proxy.port, "/some/path?q=1")
    assert status == 200
    line = proxy.wait_for(r'myproxy.access .*target="/some/path\?q=1".*').group(0)
    assert "method=GET" in line and "status=200" in line and f"backend={backend.url}" in line
    assert f"request_id={headers['x-request-id']}" in line
    assert "bytes_in=0 bytes_out=12 " in line and "duration_ms=" in line and "upstream_ms=" in line


def test_head_keeps_keep_alive_connections_in_sync(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url]))
    with connect(proxy.port) as sock:
        sock.sendall(b"HEAD /bytes?n=100&chunked=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = read_response(sock, head=True)
        assert status == 200 and body == b""
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[2] == b"backend solo"


def test_304_and_204_keep_keep_alive_connections_in_sync(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url]))
    with connect(proxy.port) as sock:
        for code in (304, 204):
            sock.sendall(f"GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert read_response(sock)[0] == code
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[2] == b"backend solo"


def test_refused_backend_is_502_and_logged_with_its_cause(start_proxy):
    port = free_port()
    proxy = start_proxy(base_config([f"http://127.0.0.1:{port}"], retries={"attempts": 1},
                                    health_check={"enabled": False}))
    status, _, body = get(proxy.port)
    assert status == 502 and b"the backend failed" in body
    assert b"refused" not in body and str(port).encode() not in body    # the log's, below
    line = proxy.wait_for(r"upstream error: .*").group(0)
    assert f"backend=http://127.0.0.1:{port}" in line and "connection refused" in line


def test_slow_backend_is_504(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], timeouts={"read": "300ms"},
                                    retries={"attempts": 1}))
    status, _, body = get(proxy.port, "/slow?seconds=3")
    assert status == 504 and b"did not answer in time" in body
    assert "kind=timeout" in proxy.wait_for(r"upstream error: .*").group(0)


def test_stopped_backend_is_taken_out_and_brought_back(start_proxy, backends):
    proxy = start_proxy(base_config(b.url for b in backends))
    down = backends[1]
    down.stop()
    proxy.wait_for(rf"backend down: backend={down.url}", timeout=5)
    before = len(down.requests)
    bodies = {get(proxy.port)[2] for _ in range(6)}
    assert bodies == {b"backend a", b"backend c"}
    assert len(down.requests) == before
    down.start()
    proxy.wait_for(rf"backend up: backend={down.url}", timeout=5)
    bodies = {get(proxy.port)[2] for _ in range(6)}
    assert bodies == {b"backend a", b"backend b", b"backend c"}


def test_all_backends_down_is_503(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url]))
    backend.stop()
    proxy.wait_for("backend down", timeout=5)
    status, headers, body = get(proxy.port)
    assert status == 503 and "retry-after" in headers
    assert b"no backend is available" in body


def test_sigterm_lets_an_in_flight_request_finish(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url]))
    sock = connect(proxy.port)
    sock.sendall(b"GET /slow?seconds=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: any(r.target.startswith("/slow") for r in backend.requests), timeout=5)
    proxy.signal(signal.SIGTERM)
    proxy.wait_for("received SIGTERM")
    with pytest.raises(OSError):
        connect(proxy.port, timeout=2).close()
    status, headers, body = read_response(sock)
    assert (status, body) == (200, b"slow solo")
    assert headers.get("connection") == "close"
    sock.close()
    assert proxy.wait(timeout=10) == 0


def test_sigint_stops_with_exit_code_0(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url]))
    proxy.signal(signal.SIGINT)
    assert proxy.wait(timeout=10) == 0
    assert "stopped" in proxy.output


def test_idle_keep_alive_connection_does_not_delay_shutdown(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], shutdown_timeout="20s"))
    sock = connect(proxy.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock)[0] == 200
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(timeout=5) == 0      # far less than the 20 s drain limit
    sock.close()


@pytest.mark.parametrize("text,words", [
    ("backends: []\n", ":1:11: backends: expected a non-empty list"),
    ("backends:\n  - http://h:1\nprot: 1\n", ":3:1: prot: unknown key (did you mean `port`?)"),
    ("backends: [\n", ":2:1: invalid YAML"),
], ids=["empty-backends", "unknown-key", "bad-yaml"])
def test_config_error_exits_1_naming_file_and_line(write_config, text, words):
    path = write_config(text)
    process = ProxyProcess([sys.executable, "wsgi.py", "--config", path])
    assert process.wait(timeout=15) == 1
    assert path + words in process.output
    assert "Traceback" not in process.output
    assert "listening" not in process.output


def test_check_validates_and_prints_effective_settings(write_config, backend):
    path = write_config(base_config([backend.url]))
    process = ProxyProcess([sys.executable, "wsgi.py", "--check", "--config", path])
    assert process.wait(timeout=15) == 0
    assert "config OK" in process.output
    assert "health_check.interval" in process.output and "(file)" in process.output
    assert "timeouts.read" in process.output and "(default)" in process.output


def test_demo_serves_three_named_backends(write_config):
    ports = [free_port() for _ in range(3)]
    path = write_config({"host": "127.0.0.1", "port": 0,
                         "backends": [f"http://localhost:{p}" for p in ports]})
    process = ProxyProcess([sys.executable, "wsgi.py", "--demo", "--config", path]).wait_listening()
    try:
        bodies = [get(process.port)[2].decode() for _ in range(3)]
        for index, (body, port) in enumerate(zip(bodies, ports), start=1):
            assert body.startswith(f"Hello from backend {index} (port {port})")
    finally:
        process.stop()


def test_demo_serves_each_routes_backends_named_by_the_route(write_config):
    ports = [free_port() for _ in range(3)]
    path = write_config({"host": "127.0.0.1", "port": 0,
                         "routes": [{"name": "api", "path": "/api", "strip_prefix": True,
                                     "backends": [f"http://localhost:{ports[0]}",
                                                  f"http://localhost:{ports[1]}"]}],
                         "backends": [f"http://localhost:{ports[2]}"]})
    process = ProxyProcess([sys.executable, "wsgi.py", "--demo", "--config", path]).wait_listening()
    try:
        assert get(process.port, "/api/users")[2].decode() == \
            f"Hello from api backend 1 (port {ports[0]}) (GET /users)\n"
        assert get(process.port, "/api/users")[2].decode().startswith(f"Hello from api backend 2 (port {ports[1]})")
        assert get(process.port, "/apix")[2].decode() == f"Hello from backend 1 (port {ports[2]}) (GET /apix)\n"
    finally:
        process.stop()


def test_the_routes_example_is_valid_and_shows_its_table():
    process = ProxyProcess([sys.executable, "wsgi.py", "--check", "--config",
                            "config/routes.example.yaml"], env={})
    assert process.wait(timeout=15) == 0, process.output
    assert "1. admin-api  host admin.localhost" in process.output
    assert "warning" not in process.output


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (Debian iproute2; .ci/run installs it)")
def test_the_listening_socket_queues_more_than_gevents_128_pending_connections():
    import subprocess

    from app.server.standalone import LISTEN_BACKLOG, Server
    server = Server(("127.0.0.1", 0), lambda environ, start_response: [])
    server.init_socket()
    try:
        port = server.address[1]
        shown = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                               text=True, timeout=10).stdout.split()
        with open("/proc/sys/net/core/somaxconn") as handle:
            cap = int(handle.read())
        assert int(shown[2]) == min(LISTEN_BACKLOG, cap) > 128     # Send-Q: the backlog
    finally:
        server.close()


def test_an_idle_keep_alive_connection_keeps_nothing_of_the_request_it_answered():
    from app.server.standalone import Server
    server = Server(("127.0.0.1", 0), lambda environ, start_response: (
        start_response("200 OK", [("Content-Length", "2")]) and [] or [b"ok"]))
    server.start()
    try:
        sock = connect(server.address[1])
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 4000 + b"\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert wait_until(lambda: [h.idle for h in server.connections] == [True], timeout=5)
        handler = next(iter(server.connections))
        assert handler.environ is None and handler.head is None and handler.wsgi_input is None
        assert handler.response_headers is None and not handler.headers.get("x-big")
        sock.close()
    finally:
        server.stop(timeout=1)


def test_the_environ_is_the_one_pywsgi_would_build(tmp_path):
    """``Handler.get_environ`` builds the environ from the strict parse itself; an app sees
    the same keys and values as under pywsgi's own handler (plus ours)."""
    import json

    from gevent.pywsgi import WSGIServer

    from app.server.standalone import Server

    def app(environ, start_response):
        shown = {key: value for key, value in environ.items()
                 if isinstance(value, str) and key not in ("RAW_URI", "SERVER_SOFTWARE")}
        body = json.dumps(shown, sort_keys=True).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    raw = (b"POST /a%20b/c?x=1&y=%41 HTTP/1.1\r\nHost: h:1\r\nCookie: a=1\r\nX-Multi: 1\r\n"
           b"Content-Type: text/plain\r\nCookie: b=2\r\nX-Multi: 2\r\nX_Under: no\r\n"
           b"Accept: */*\r\nContent-Length: 2\r\n\r\nok")
    seen = []
    for server in (Server(("127.0.0.1", 0), app), WSGIServer(("127.0.0.1", 0), app, log=None)):
        server.start()
        try:
            status, _, body = request(server.server_port, raw)
        finally:
            server.stop()
        assert status == 200
        environ = json.loads(body)
        environ.pop("REMOTE_PORT"), environ.pop("SERVER_PORT")
        seen.append(environ)
    ours, pywsgi = seen
    assert ours == pywsgi
    assert ours["HTTP_COOKIE"] == "a=1; b=2" and ours["HTTP_X_MULTI"] == "1,2"
    assert ours["PATH_INFO"] == "/a b/c" and "HTTP_X_UNDER" not in ours


@pytest.mark.parametrize("status, headers", [
    ("200 OK", [("X-Value", "a\r\nX-Evil: 1")]),
    ("200 OK", [("X-Name\r\nX-Evil", "1")]),
    ("200 OK\r\nX-Evil: 1", []),
    ("200 OK", [("X-Value", "\u2603")]),
    ("200 OK", [("X-Ok", "1"), ("X-Value", "a\rb"), ("X-Evil", "\n")]),
    ("200 OK", [(b"X-Bytes", "1"), ("X-Evil", "1")]),
])
def test_a_header_that_would_split_the_response_is_refused(status, headers):
    def app(environ, start_response):
        start_response(status, headers)
        return [b"ok"]

    code, seen, _ = answer_of(app, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert code == 500 and "x-evil" not in seen


def test_the_garbage_collector_is_set_for_serving():
    import gc

    from app.server.standalone import GC_THRESHOLDS, tune_gc
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_no_body_goes_out_after_a_head_whatever_the_app_yields():
    """The handler writes the head alone for a HEAD, every piece the app yields dropped, so
    the next request on the connection is read in sync."""
    from app.server.standalone import Server

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"abc", b"def"])         # no length: chunked for a GET

    server = Server(("127.0.0.1", 0), app)
    server.start()
    try:
        with connect(server.server_port) as sock:
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n"
                         b"Connection: close\r\n\r\n")
            data = read_all(sock)
    finally:
        server.stop()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding" not in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 ")             # the GET's answer follows at once
    assert rest.endswith(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")


def test_a_204_with_a_body_is_answered_500_before_anything_goes_out():
    def app(environ, start_response):
        start_response("204 No Content", [])
        return [b"not allowed"]

    code, _, body = answer_of(app, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert code == 500 and b"not allowed" not in body


def answer_of(app, raw: bytes):
    """``app`` served by MyProxy's own server on port 0 for one request ``raw``: its
    (status, headers, body)."""
    from app.server.standalone import Server
    server = Server(("127.0.0.1", 0), app)
    server.start()
    try:
        return request(server.server_port, raw)
    finally:
        server.stop()
