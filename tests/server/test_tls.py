"""TLS termination (app.server.tls) under ``python wsgi.py`` and gunicorn: real handshakes over
loopback with certificates made here (several names, a wildcard, an expired one)."""
import os
import re
import shutil
import signal
import socket
import ssl
import time

import pytest
import websocket
import yaml
from gevent.event import Event
from gevent.pool import Pool

from tests.backends import TestBackend, free_port, wait_until
from tests.certs import client_context, make_certificate, served_names, tls_connect
from tests.conftest import ProxyProcess, base_config
from tests.servers import GUNICORN, SERVERS, launch, serving
from tests.websocket_backend import WebSocketBackend
from tests.rawclient import connect, read_response


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    made = {
        "default": make_certificate(folder, "default", ["default.test"]),
        "multi": make_certificate(folder, "multi", ["a.test", "*.wild.test"]),
        "b": make_certificate(folder, "b", ["b.test"]),
        "new": make_certificate(folder, "new", ["default.test", "renewed.test"]),
        "soon": make_certificate(folder, "soon", ["soon.test"], days=5),
    }
    made["folder"] = folder
    return made


def tls_section(*pairs, **options) -> dict:
    return {"certificates": [{"cert": cert, "key": key} for cert, key in pairs], **options}


@pytest.fixture(scope="module")
def backend():
    started = TestBackend("tls").start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def ws_backend():
    started = WebSocketBackend("wss").start()
    yield started
    started.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, certs, backend, tmp_path_factory):
    """One TLS proxy per server: three certificates, HSTS, both kinds of backend."""
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section(certs["default"], certs["multi"], certs["b"], hsts="24h"))
    with serving(request.param, tmp_path_factory, config) as process:
        yield process


def https_get(port, target="/", server_name="default.test", headers="", sock=None):
    own = sock is None
    sock = sock or tls_connect(port, server_name)
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {server_name or 't'}\r\n{headers}"
                     f"{'Connection: close' if own else ''}\r\n\r\n".encode())
        return read_response(sock)
    finally:
        if own:
            sock.close()


@pytest.mark.parametrize("server_name,expected", [
    ("default.test", ["default.test"]),
    ("a.test", ["a.test", "*.wild.test"]),
    ("x.wild.test", ["a.test", "*.wild.test"]),      # a wildcard covers one label
    ("B.TEST", ["b.test"]),                          # names are case-insensitive
    ("deep.x.wild.test", ["default.test"]),          # ... and only one label
    ("wild.test", ["default.test"]),
    ("unknown.test", ["default.test"]),              # no certificate: the first one
    (None, ["default.test"]),                        # no SNI: the first one
], ids=lambda value: str(value))
def test_sni_picks_the_certificate_by_its_names(proxy, server_name, expected):
    with tls_connect(proxy.port, server_name) as sock:
        assert served_names(sock) == expected
        assert sock.selected_alpn_protocol() is None    # the client offered none


def test_https_reaches_the_backend_as_https_with_hsts_and_the_tls_in_the_access_line(proxy, backend):
    context = client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(proxy.port, "b.test", context=context) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"     # never h2
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        status, headers, body = https_get(proxy.port, "/tls-forwarded", "b.test", sock=sock)
        assert (status, body) == (200, b"backend tls")
        assert headers["strict-transport-security"] == "max-age=86400"
        # The connection carries a second request (keep-alive over TLS).
        assert https_get(proxy.port, "/tls-again", "b.test", sock=sock)[0] == 200
    seen = next(r for r in backend.requests if r.target == "/tls-forwarded")
    assert seen.header("X-Forwarded-Proto") == "https"
    assert wait_until(lambda: re.search(r"target=/tls-again .* tls=TLSv1\.[23] resumed=0",
                                        proxy.output), timeout=5), proxy.output


def test_a_resumed_session_says_so_in_the_access_line(proxy):
    context = client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with tls_connect(proxy.port, "b.test", context=context) as first:
        https_get(proxy.port, "/first-session", "b.test", sock=first)
        session = first.session
    with tls_connect(proxy.port, "b.test", context=context, session=session) as second:
        assert second.session_reused
        https_get(proxy.port, "/resumed-session", "b.test", sock=second)
    assert wait_until(lambda: re.search(r"target=/resumed-session .* tls=TLSv1\.2 resumed=1",
                                        proxy.output), timeout=5), proxy.output


def test_plain_http_to_the_tls_port_gets_400_and_is_closed(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 400
        assert b"plain HTTP request was sent to the HTTPS port" in body
        assert headers["connection"] == "close"
        sock.settimeout(5)
        assert sock.recv(1) == b""              # closed
    body = https_get(proxy.port, "/_myproxy/metrics")[2]
    assert re.search(rb'myproxy_tls_handshake_failures_total\{reason="plain_http"\} [1-9]', body)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_0_and_1_1_are_refused_by_the_server(proxy):
    context = client_context()
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")        # so that this client offers TLS 1.1
    with pytest.raises(ssl.SSLError) as raised:
        tls_connect(proxy.port, "b.test", context=context).close()
    assert raised.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"     # the server's alert


def test_status_and_metrics_show_each_certificate_s_time_left(proxy):
    status, _, body = https_get(proxy.port, "/_myproxy/status")
    assert status == 200
    tls = yaml.safe_load(body)["tls"]
    assert [c["names"] for c in tls["certificates"]] == [["default.test"], ["a.test", "*.wild.test"],
                                                         ["b.test"]]
    assert all(29 < c["days_left"] <= 30 for c in tls["certificates"])
    assert tls["certificates"][1]["issuer"] == "MyProxy Test CA"
    status, _, body = https_get(proxy.port, "/_myproxy/metrics")
    found = re.search(rb'myproxy_tls_certificate_expiry_seconds\{name="\*\.wild\.test"\} (\S+)', body)
    assert found, body
    assert 29 * 86400 < float(found.group(1)) <= 30 * 86400


@pytest.mark.parametrize("kind", SERVERS)
def test_websocket_over_tls(kind, certs, ws_backend, tmp_path):
    config = base_config([ws_backend.url], health_check={"enabled": False},
                         tls=tls_section(certs["default"]))
    process, _ = _start(kind, config, tmp_path)
    try:
        ws = websocket.create_connection(f"wss://127.0.0.1:{process.port}/chat", timeout=10,
                                         sslopt={"cert_reqs": ssl.CERT_NONE,
                                                 "check_hostname": False})
        try:
            ws.send("hello over tls")
            assert ws.recv() == "hello over tls"
            ws.send_binary(b"\x00" * 70000)
            assert ws.recv() == b"\x00" * 70000
        finally:
            ws.close()
        assert wait_until(lambda: re.search(r"target=/chat status=101 .* tls=TLSv1\.3",
                                            process.output), timeout=5), process.output
    finally:
        process.stop()
    assert "Traceback" not in process.output


# --- processes of their own ----------------------------------------------------------------


def _start(kind, config, tmp_path):
    path = tmp_path / f"config-{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = launch(kind, str(path))
    if kind == "gunicorn":       # the master accepts before its worker is up: SIGHUP needs it
        process.wait_for(r"ready: SIGHUP reloads")
    return process, path


@pytest.mark.parametrize("kind", SERVERS)
def test_a_slow_handshake_is_cut_off_at_client_header(kind, certs, backend, tmp_path):
    config = base_config([backend.url], health_check={"enabled": False},
                         timeouts={"client_header": "1s"}, tls=tls_section(certs["default"]))
    process, _ = _start(kind, config, tmp_path)
    try:
        silent = connect(process.port)
        trickle = connect(process.port)
        trickle.sendall(b"\x16\x03\x01")          # a ClientHello's first bytes, then nothing
        started = time.monotonic()
        for sock in (silent, trickle):
            sock.settimeout(8)
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
        assert 0.8 < time.monotonic() - started < 5
        with tls_connect(process.port, "default.test") as sock:   # others are served meanwhile
            assert https_get(process.port, "/after", sock=sock)[0] == 200
        # Both lines name the client, the one cut off mid-handshake too.
        assert wait_until(lambda: process.output.count(
            "closing the connection of 127.0.0.1: no TLS handshake within 1.0s") == 2, timeout=5), \
            process.output
        with tls_connect(process.port, "default.test") as sock:
            body = https_get(process.port, "/_myproxy/metrics", sock=sock)[2]
        assert b'myproxy_tls_handshake_failures_total{reason="timeout"} 2.0' in body
    finally:
        process.stop()
    assert "Traceback" not in process.output


@pytest.mark.parametrize("kind", SERVERS)
def test_sighup_swaps_a_certificate_under_load_without_a_failed_request(kind, certs, backend,
                                                                        tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs["default"][0], cert)
    shutil.copy(certs["default"][1], key)
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section((str(cert), str(key))))
    process, _ = _start(kind, config, tmp_path)
    failures, served = [], {"old": 0, "new": 0}
    stop = Event()

    def client():
        while not stop.is_set() and sum(served.values()) < 3000:
            try:
                with tls_connect(process.port, "default.test") as sock:
                    names = served_names(sock)
                    for _ in range(3):               # keep-alive requests on each connection
                        status = https_get(process.port, "/load", sock=sock)[0]
                        if status != 200:
                            failures.append(status)
                    served["new" if "renewed.test" in names else "old"] += 1
            except (OSError, ssl.SSLError) as error:
                failures.append(repr(error))

    try:
        kept = tls_connect(process.port, "default.test")        # open across the reload
        assert https_get(process.port, "/before", sock=kept)[0] == 200
        pool = Pool(4)
        for _ in range(4):
            pool.spawn(client)
        assert wait_until(lambda: served["old"] >= 20, timeout=20)
        shutil.copy(certs["new"][0], cert)
        shutil.copy(certs["new"][1], key)
        process.signal(signal.SIGHUP)
        assert wait_until(lambda: served["new"] >= 20, timeout=20), process.output
        stop.set()
        pool.join(timeout=20)
        assert failures == []
        assert https_get(process.port, "/after", sock=kept)[0] == 200   # untouched
        assert served_names(kept) == ["default.test"]
        kept.close()
        with tls_connect(process.port, "default.test") as sock:
            assert served_names(sock) == ["default.test", "renewed.test"]
        with tls_connect(process.port, None) as sock:                  # the default too
            assert served_names(sock) == ["default.test", "renewed.test"]
    finally:
        stop.set()
        process.stop()
    assert "Traceback" not in process.output


@pytest.mark.parametrize("kind", SERVERS)
def test_a_bad_certificate_at_reload_is_refused_and_the_old_one_stays(kind, certs, backend,
                                                                      tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs["default"][0], cert)
    shutil.copy(certs["default"][1], key)
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section((str(cert), str(key))))
    process, _ = _start(kind, config, tmp_path)
    try:
        shutil.copy(certs["b"][0], cert)           # with the old key: no match
        process.signal(signal.SIGHUP)
        process.wait_for(r"config reload refused, the running config stays: .*"
                         + re.escape(f"tls.certificates[0].key: {key}: the key does not match"))
        with tls_connect(process.port, "default.test") as sock:
            assert served_names(sock) == ["default.test"]
            status, _, body = https_get(process.port, "/_myproxy/metrics", sock=sock)
        assert b'myproxy_config_reloads_total{result="failure"} 1.0' in body
    finally:
        process.stop()
    assert "Traceback" not in process.output


def _start_failing(kind, config, tmp_path) -> ProxyProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    if kind == "wsgi.py":
        import sys
        return ProxyProcess([sys.executable, "wsgi.py", "--config", str(path)])
    return ProxyProcess([GUNICORN, "-k", "gevent", "wsgi:application"],
                        env={"MYPROXY_CONFIG": str(path), "PORT": str(free_port())})


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("problem", ["missing key", "mismatched key", "not PEM"])
def test_a_bad_certificate_at_start_exits_1_naming_the_file(kind, problem, certs, tmp_path):
    """(An expired one starts: tests/server/test_certificates.py.)"""
    cert, key = certs["default"]
    which, expected = "cert", None
    if problem == "missing key":
        key = str(tmp_path / "absent.key")
        which, expected = "key", f"{key}: cannot read the file: No such file or directory"
    elif problem == "mismatched key":
        key = certs["b"][1]
        which, expected = "key", f"{key}: the key does not match the certificate {cert}"
    else:
        cert = str(tmp_path / "garbage.pem")
        with open(cert, "w") as handle:
            handle.write("not a certificate\n")
        expected = f"{cert}: not a PEM certificate"
    config = base_config(["http://127.0.0.1:1"], tls=tls_section((cert, key)))
    process = _start_failing(kind, config, tmp_path)
    assert process.wait(timeout=20) == 1
    found = re.search(rf"myproxy: config error: \S+config\.yaml:\d+: "
                      rf"tls\.certificates\[0\]\.{which}: (.*)", process.output)
    assert found, process.output
    assert found.group(1).startswith(expected), process.output
    assert "Traceback" not in process.output
    assert "Booting worker" not in process.output


def test_check_lists_each_certificate_and_warns_when_it_expires_soon(certs, tmp_path):
    import subprocess
    import sys
    config = base_config(["http://127.0.0.1:1"], tls=tls_section(certs["multi"], certs["soon"]))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "wsgi.py", "--check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"tls: certificate\[0\] \(default\) \S+multi\.pem: names=a\.test,\*\.wild\.test "
                     r"issuer='MyProxy Test CA' not_after=\S+ \S+ UTC days_left=(29\.\d|30)", out), out
    assert re.search(r"certificate\[1\] \S+soon\.pem: names=soon\.test .* days_left=(4\.\d|5)\b", out)
    assert "tls: WARNING: certificate[1] (soon.test) expires in" in out
    assert "WARNING: certificate[0]" not in out


@pytest.mark.parametrize("kind", SERVERS)
def test_redirect_from_answers_308_to_https_and_hsts_only_over_tls(kind, certs, backend, tmp_path):
    redirect_port = free_port()
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section(certs["default"], redirect_from=redirect_port, hsts="1h"))
    if kind == "wsgi.py":
        config["port"] = free_port()
    process, _ = _start(kind, config, tmp_path)
    try:
        assert wait_until(lambda: _accepts(redirect_port), timeout=10)
        before = len(backend.requests)
        with connect(redirect_port) as sock:
            sock.sendall(b"GET /_myproxy/status HTTP/1.1\r\nHost: example.test\r\n\r\n")
            status, headers, _ = read_response(sock)               # admin pages too
            assert (status, headers["location"]) == (
                308, f"https://example.test:{process.port}/_myproxy/status")
            assert "strict-transport-security" not in headers    # RFC 6797 §7.2: not over HTTP
            sock.sendall(b"POST /a%2Fb/../c?q=%zz HTTP/1.1\r\nHost: example.test:80\r\n"
                         b"Content-Length: 2\r\n\r\nhi")      # on the same connection
            status, headers, body = read_response(sock)
            assert status == 308
            assert headers["location"] == f"https://example.test:{process.port}/a%2Fb/../c?q=%zz"
        with connect(redirect_port) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert read_response(sock)[0] == 400                   # no Host to redirect to
        assert len(backend.requests) == before                     # nothing was proxied
        status, headers, _ = https_get(process.port, "/over-tls")
        assert (status, headers["strict-transport-security"]) == (200, "max-age=3600")
        # Logged as what they are, not as admin requests; not counted as proxied traffic.
        line = process.wait_for(r"myproxy.access .*target=/_myproxy/status status=308.*").group(0)
        assert "admin=" not in line
        metrics = https_get(process.port, "/_myproxy/metrics")[2].decode()
        assert 'code="308"' not in metrics and 'code="400"' not in metrics
    finally:
        process.stop()
    assert "Traceback" not in process.output


def _accepts(port: int) -> bool:
    try:
        connect(port, timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("kind", SERVERS)
def test_sigterm_closes_idle_tls_connections_and_exits_0(kind, certs, backend, tmp_path):
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section(certs["default"]))
    process, _ = _start(kind, config, tmp_path)
    idle = tls_connect(process.port, "default.test")
    try:
        assert https_get(process.port, "/then-idle", sock=idle)[0] == 200
        process.signal(signal.SIGTERM)
        idle.settimeout(10)
        try:
            assert idle.recv(1) == b""          # closed by the drain, not left to time out
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert process.wait(timeout=15) == 0
    finally:
        idle.close()
        process.stop()
    assert "Traceback" not in process.output


def test_check_exits_1_for_a_certificate_it_cannot_serve(certs, tmp_path):
    import subprocess
    import sys
    cert, key = certs["default"][0], certs["b"][1]
    config = base_config(["http://127.0.0.1:1"], tls=tls_section((cert, key)))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "wsgi.py", "--check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 1
    assert f"tls.certificates[0].key: {key}: the key does not match the certificate" in done.stdout
    assert "config OK" not in done.stdout


def test_a_closing_connection_ends_with_close_notify_and_says_close(proxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    tls = client_context().wrap_socket(sock, server_hostname="b.test", suppress_ragged_eofs=False)
    with tls:
        tls.sendall(b"GET /closing HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        received = b""
        while True:
            data = tls.recv(65536)       # an end without close_notify raises SSLEOFError
            if not data:
                break
            received += data
    head = received.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert b"\r\nconnection: close" in head     # RFC 9112 §9.6 (wrk relies on it)


@pytest.mark.parametrize("kind", SERVERS)
def test_min_version_1_3_refuses_tls_1_2_and_a_reload_changes_it_live(kind, certs, backend,
                                                                       tmp_path):
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section(certs["default"], min_version="1.3"))
    process, path = _start(kind, config, tmp_path)
    only_1_2 = client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_connect(process.port, "default.test", context=only_1_2).close()
        with tls_connect(process.port, "default.test") as sock:
            assert sock.version() == "TLSv1.3"
        config["tls"]["min_version"] = "1.2"
        path.write_text(yaml.safe_dump(config))
        process.signal(signal.SIGHUP)
        process.wait_for(r"config reloaded: tls\.min_version 1\.3->1\.2")
        with tls_connect(process.port, "default.test", context=only_1_2) as sock:
            assert sock.version() == "TLSv1.2"
    finally:
        process.stop()
    assert "Traceback" not in process.output
