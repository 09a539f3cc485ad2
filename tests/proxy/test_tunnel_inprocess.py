"""Upgrades in this process: which requests ask for one, in-flight counting, TLS backends,
and servers that cannot hand their connection over. Real sockets, real servers on port 0."""
import shutil
import ssl
import subprocess

import pytest
import websocket
from webtest import TestApp

from app import create_app
from app.config import parse
from app.lb.routes import RuntimeHolder, build_runtime
from app.errors import BadRequest, UpstreamConnectError
from app.middleware.access import RequestLog
from app.proxy.proxy import Proxy
from app.server.standalone import Server
from app.proxy.tunnel import Tunnels, upgrade_requested
from app.proxy.transport import Upstream
from app.request import KEY as REQUEST, Request
from tests.backends import wait_until
from tests.websocket_backend import WebSocketBackend

CAN_TAKE = {"myproxy.take_connection": None, "SERVER_PROTOCOL": "HTTP/1.1"}


@pytest.mark.parametrize("environ,expected", [
    ({"HTTP_CONNECTION": "Upgrade", "HTTP_UPGRADE": "websocket"}, "websocket"),
    ({"HTTP_CONNECTION": "keep-alive, upgrade", "HTTP_UPGRADE": "foo, echo/1 ,"}, "foo, echo/1"),
    ({"HTTP_UPGRADE": "websocket"}, ""),
    ({"HTTP_CONNECTION": "Upgrade"}, ""),
    ({"HTTP_CONNECTION": "Upgrade", "HTTP_UPGRADE": "websocket", "SERVER_PROTOCOL": "HTTP/1.0"}, ""),
    ({"HTTP_CONNECTION": "Upgrade", "HTTP_UPGRADE": "echo/1, H2C"}, ""),
], ids=["websocket", "protocol-list", "no-connection-token", "no-upgrade-header", "http-1.0",
        "h2c-in-a-list"])
def test_which_requests_ask_to_switch_protocols(environ, expected):
    assert upgrade_requested({**CAN_TAKE, **environ}) == expected


@pytest.mark.parametrize("environ", [
    {"HTTP_UPGRADE": ""}, {"HTTP_UPGRADE": "web socket"}, {"HTTP_UPGRADE": "a/b/c"},
    {"HTTP_UPGRADE": "websocket", "HTTP_X_FOLDED": "a\r\n b"},
], ids=["empty", "space", "two-slashes", "header-spans-lines"])
def test_malformed_upgrade_requests_are_400(environ):
    with pytest.raises(BadRequest):
        upgrade_requested({**CAN_TAKE, "HTTP_CONNECTION": "upgrade", **environ})


def test_without_a_connection_to_take_an_upgrade_is_an_ordinary_request(backend):
    app = create_app(parse(f"backends:\n  - {backend.url}\n", environ={}))
    response = TestApp(app, lint=False).get("/", headers={"Connection": "Upgrade",
                                                          "Upgrade": "websocket"})
    assert response.text == "backend solo"
    names = {name.lower() for name, _ in backend.requests[-1].headers}
    assert not names & {"upgrade", "connection"}


@pytest.fixture
def serve():
    """Serve a WSGI app with ``app.server.Server`` on port 0; stopped after the test."""
    servers = []

    def start(app) -> int:
        server = Server(("127.0.0.1", 0), app)
        server.start()
        servers.append(server)
        return server.server_port

    yield start
    for server in servers:
        server.stop(timeout=1)


def test_a_tunnel_counts_as_in_flight_for_its_backend_until_it_closes(serve):
    ws_backend = WebSocketBackend("counted").start()
    try:
        app = create_app(parse(f"backends:\n  - {ws_backend.url}\n", environ={}))
        backend = app.balancer.backends[0]
        ws = websocket.create_connection(f"ws://127.0.0.1:{serve(app)}/", timeout=10)
        ws.send("hi")
        assert ws.recv() == "hi"
        assert backend.in_flight == 1 and backend.requests == 1
        ws.close()
        assert wait_until(lambda: backend.in_flight == 0, timeout=5)
    finally:
        ws_backend.stop()


def test_tunnels_go_where_the_policy_sends_them(serve):
    ws_backends = [WebSocketBackend(name).start() for name in ("a", "b", "c")]
    try:
        urls = "".join(f"  - {backend.url}\n" for backend in ws_backends)
        port = serve(create_app(parse(f"backends:\n{urls}", environ={})))
        sockets = [websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
                   for _ in range(6)]
        assert [ws.getheaders()["x-backend"] for ws in sockets] == ["a", "b", "c"] * 2
        for ws in sockets:
            ws.close()
    finally:
        for backend in ws_backends:
            backend.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (certificate file, key file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (Debian openssl; .ci/run installs it)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def tls_backend(certificate):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    backend = WebSocketBackend("tls", ssl_context=context).start()
    yield backend
    backend.stop()


def test_https_backends_are_tunnelled_over_tls(serve, certificate, tls_backend):
    upstream = Upstream()
    live = RuntimeHolder(build_runtime(parse(f"backends:\n  - {tls_backend.url}\n", environ={}),
                                       upstream))
    tunnels = Tunnels(ssl_context=ssl.create_default_context(cafile=certificate[0]))
    logged = RequestLog(Proxy(upstream, tunnels=tunnels))
    balancer = live.runtime.default.balancer

    def app(environ, start_response):
        environ[REQUEST] = Request(runtime=live.runtime)
        return logged(environ, start_response)

    port = serve(app)
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/secure", timeout=10)
    ws.send_binary(b"\x00" * 100_000)
    assert ws.recv() == b"\x00" * 100_000
    assert ws.getheaders()["x-backend"] == "tls"
    ws.close()
    assert wait_until(lambda: tls_backend.ended == ["close frame"], timeout=5)
    assert wait_until(lambda: balancer.backends[0].in_flight == 0, timeout=5)


def test_an_untrusted_backend_certificate_fails_before_anything_is_sent(tls_backend):
    config = parse(f"backends:\n  - {tls_backend.url}\n", environ={})
    with pytest.raises(UpstreamConnectError) as caught:
        Tunnels().send(tls_backend.url, "GET", "/", [
            ("Host", "127.0.0.1"), ("Connection", "Upgrade"), ("Upgrade", "echo")])
    assert "TLS handshake failed" in caught.value.detail and caught.value.sent is False
    assert tls_backend.requests == []



def test_a_websocket_goes_to_its_routes_backend_with_the_prefix_stripped(serve):
    chat, site = WebSocketBackend("chat").start(), WebSocketBackend("site").start()
    try:
        text = (f"routes:\n  - name: chat\n    path: /chat\n    strip_prefix: true\n"
                f"    backends: [{chat.url}]\n    timeouts: {{tunnel_idle: 30s}}\n"
                f"backends: [{site.url}]\nhealth_check: {{enabled: false}}\n")
        port = serve(create_app(parse(text, environ={})))
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/chat/room?id=1", timeout=10)
        ws.send("hello")
        assert ws.recv() == "hello" and ws.getheaders()["x-backend"] == "chat"
        assert chat.requests[-1].target == "/room?id=1" and site.requests == []
        ws.close()
    finally:
        chat.stop()
        site.stop()


def test_an_open_tunnel_holds_its_backends_slot_until_it_closes(serve):
    ws_backend = WebSocketBackend("capped").start()
    try:
        app = create_app(parse(f"backends:\n  - url: {ws_backend.url}\n    max_conns: 1\n"
                               "queue: {size: 0}\nhealth_check: {enabled: false}\n", environ={}))
        port = serve(app)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
        assert refused.value.status_code == 503       # the cap is taken by the open tunnel
        ws.close()
        assert wait_until(lambda: app.balancer.backends[0].in_flight == 0, timeout=5)
        websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10).close()
    finally:
        ws_backend.stop()
