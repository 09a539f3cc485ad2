"""WebSockets and other upgrades through a running proxy, under ``python wsgi.py`` and gunicorn.

A real WebSocket backend (``tests.websocket_backend``) and a real WebSocket client
(``websocket-client``) on either side of the proxy; every test runs under both servers.
"""
import os
import signal

import pytest
import websocket
from gevent.pool import Pool

from tests.backends import free_port, wait_until
from tests.conftest import ProxyProcess, base_config
from tests.servers import SERVERS, launch, serving
from tests.websocket_backend import CLOSE, WebSocketBackend
from tests.rawclient import connect, read_response, request

SIGTERM_SEEN = {"wsgi.py": "received SIGTERM", "gunicorn": "received SIGTERM",
                "gunicorn-gevent": "Handling signal: term"}
CLOSED = (websocket.WebSocketConnectionClosedException, ConnectionError)
# The WebSocket backend shares this process with clients moving megabytes: keep active
# health checks from taking it out while it is busy. Tunnels are what is tested here.
NO_CHECKS = {"health_check": {"enabled": False}}


def open_ws(proxy, path="/chat") -> websocket.WebSocket:
    return websocket.create_connection(f"ws://127.0.0.1:{proxy.port}{path}", timeout=10)


def upgrade_request(target="/chat", upgrade="websocket", extra="") -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def ws_backend():
    backend = WebSocketBackend("one").start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, ws_backend, tmp_path_factory):
    """One proxy per server for the tests that need nothing special."""
    with serving(request.param, tmp_path_factory,
                 base_config([ws_backend.url], **NO_CHECKS)) as process:
        yield process


@pytest.fixture
def start(write_config):
    """Start a proxy under a server with a config of its own; stopped after the test."""
    started = []

    def start_one(server, config) -> ProxyProcess:
        process = launch(server, write_config(config))
        started.append(process)
        return process

    yield start_one
    for process in started:
        process.stop()
        assert "Traceback" not in process.output, process.output


def test_handshake_reaches_the_backend_with_its_upgrade_headers(proxy, ws_backend):
    ws = open_ws(proxy, "/chat?room=1")
    headers = ws.getheaders()      # websocket-client has checked Sec-WebSocket-Accept
    assert ws.status == 101 and headers["x-backend"] == "one" and headers["x-request-id"]
    seen = [r for r in ws_backend.requests if r.target == "/chat?room=1"][-1]
    assert seen.header("Connection") == "Upgrade" and seen.header("Upgrade") == "websocket"
    assert seen.header("Sec-WebSocket-Key") and seen.header("Sec-WebSocket-Version") == "13"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Request-ID") == headers["x-request-id"]
    ws.close()


def test_text_and_binary_messages_flow_both_ways(proxy):
    ws = open_ws(proxy)
    ws.send("héllo")
    assert ws.recv() == "héllo"
    every_byte = bytes(range(256)) * 4
    ws.send_binary(every_byte)
    assert ws.recv() == every_byte
    ws.send("push 3 0.01")         # the backend speaks unasked
    assert [ws.recv() for _ in range(3)] == ["push 0", "push 1", "push 2"]
    ws.close()


def test_a_10_mib_message_goes_through_whole(proxy):
    ws = open_ws(proxy)
    message = os.urandom(10 * 1024 * 1024)
    ws.send_binary(message)
    assert ws.recv() == message
    ws.close()


def test_100_tunnels_at_once(proxy, ws_backend):
    assert wait_until(lambda: ws_backend.open == 0, timeout=5)
    pool = Pool(100)
    sockets = pool.map(lambda _: open_ws(proxy), range(100))
    assert ws_backend.open == 100
    replies = pool.map(lambda pair: (pair[1].send(f"n{pair[0]}"), pair[1].recv())[1],
                       enumerate(sockets))
    assert replies == [f"n{index}" for index in range(100)]
    pool.map(lambda ws: ws.close(), sockets)
    assert wait_until(lambda: ws_backend.open == 0, timeout=10)


def test_client_close_ends_the_tunnel(proxy, ws_backend):
    ws = open_ws(proxy)
    request_id = ws.getheaders()["x-request-id"]
    ended = len(ws_backend.ended)
    ws.close()                     # close frame, the backend's reply, then TCP
    assert wait_until(lambda: len(ws_backend.ended) > ended, timeout=5)
    assert ws_backend.ended[-1] == "close frame"
    line = proxy.wait_for(rf"myproxy.access request_id={request_id} .*").group(0)
    assert "status=101" in line and "backend=" in line
    assert "closed_by=" in proxy.wait_for(rf"tunnel closed: request_id={request_id} .*").group(0)


def test_client_dropping_the_connection_ends_the_tunnel(proxy, ws_backend):
    ws = open_ws(proxy)
    ended = len(ws_backend.ended)
    ws.sock.close()                # no close frame: TCP just ends
    assert wait_until(lambda: len(ws_backend.ended) > ended, timeout=5)
    assert ws_backend.ended[-1] == "eof"


def test_backend_close_reaches_the_client(proxy):
    ws = open_ws(proxy)
    request_id = ws.getheaders()["x-request-id"]
    ws.send("close")
    opcode, payload = ws.recv_data(control_frame=True)
    assert (opcode, payload) == (CLOSE, b"\x03\xe8")   # 1000, normal closure
    assert ws.sock.recv(1) == b""  # and then the end of the stream
    proxy.wait_for(rf"request_id={request_id} .*status=101")


def test_any_protocol_is_tunnelled_with_bytes_sent_before_the_101(proxy, ws_backend):
    head = (b"GET /raw%2Fpath?q=%zz HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Upgrade\r\n"
            b"Upgrade: echo/1\r\n\r\n")
    with connect(proxy.port) as sock:
        sock.sendall(head + b"early bytes ")          # sent without waiting for the 101
        reader = sock.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 101 Switching Protocols\r\n"
        lines = iter(reader.readline, b"\r\n")
        assert b"Upgrade: echo/1\r\n" in list(lines)
        assert reader.read(12) == b"early bytes "
        sock.sendall(bytes(range(256)))
        assert reader.read(256) == bytes(range(256))
    seen = [r for r in ws_backend.requests if r.target.startswith("/raw")][-1]
    assert seen.target == "/raw%2Fpath?q=%zz"
    assert (seen.header("Connection"), seen.header("Upgrade")) == ("Upgrade", "echo/1")


@pytest.mark.parametrize("framing,body", [
    ("Content-Length: 5", b"hello"), ("Transfer-Encoding: chunked", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
], ids=["content-length", "chunked"])
def test_an_upgrade_request_body_goes_first_then_the_tunnel(proxy, ws_backend, framing, body):
    head = (f"POST /with-body HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n"
            f"{framing}\r\n\r\n").encode()
    with connect(proxy.port) as sock:
        sock.sendall(head + body + b"after")
        reader = sock.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 101 Switching Protocols\r\n"
        list(iter(reader.readline, b"\r\n"))
        assert reader.read(5) == b"after"
    assert [r.body for r in ws_backend.requests if r.target == "/with-body"][-1] == b"hello"


def test_a_non_101_answer_is_an_ordinary_response(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(upgrade_request("/deny"))
        status, headers, body = read_response(sock)
        assert (status, body) == (403, b"denied\n")
        assert "upgrade" not in headers
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")   # still plain HTTP
        assert read_response(sock)[:3:2] == (200, b"ws one")


@pytest.mark.parametrize("raw", [
    upgrade_request(upgrade="web socket"),
    upgrade_request(upgrade="websocket/"),
    upgrade_request(extra="X-Long: a\r\n b\r\n"),
], ids=["space-in-protocol", "empty-version", "obs-fold"])
def test_bad_upgrade_framing_is_400_and_never_reaches_a_backend(proxy, ws_backend, raw):
    before = len(ws_backend.requests)
    status, _, _ = request(proxy.port, raw.replace(b"/chat", b"/bad-upgrade"))
    assert status == 400
    assert not [r for r in ws_backend.requests[before:] if r.target == "/bad-upgrade"]


def test_backend_dropping_the_handshake_is_502(proxy):
    status, _, body = request(proxy.port, upgrade_request("/drop"))
    assert status == 502 and b"the backend failed" in body


@pytest.mark.parametrize("server", SERVERS)
def test_refused_backend_is_502(start, server):
    url = f"http://127.0.0.1:{free_port()}"
    proxy = start(server, base_config([url], retries={"attempts": 1}, **NO_CHECKS))
    status, _, body = request(proxy.port, upgrade_request())
    assert status == 502 and b"the backend failed" in body and url.encode() not in body
    assert "kind=connect" in proxy.wait_for(rf"upstream error: backend={url}.*").group(0)


@pytest.mark.parametrize("server", SERVERS)
def test_a_refused_handshake_is_retried_on_another_backend(start, ws_backend, server):
    refused = f"http://127.0.0.1:{free_port()}"
    proxy = start(server, base_config([refused, ws_backend.url], **NO_CHECKS))
    sockets = [open_ws(proxy) for _ in range(4)]
    assert {ws.getheaders()["x-backend"] for ws in sockets} == {"one"}
    for ws in sockets:
        ws.close()                 # the access line is written when a tunnel ends
    assert f"tried={refused}(connect)," in proxy.wait_for(r"myproxy.access .*status=101.*").group(0)


@pytest.mark.parametrize("server", SERVERS)
def test_tunnel_outlives_the_read_timeout_and_closes_when_idle(start, ws_backend, server):
    proxy = start(server, base_config([ws_backend.url], **NO_CHECKS,
                                      timeouts={"read": "200ms", "tunnel_idle": "1s"}))
    ws = open_ws(proxy)
    ws.send("delay 0.5 late")      # both sides silent for longer than timeouts.read
    assert ws.recv() == "late"
    ws.send("push 4 0.4")          # 1.6 s of traffic one way only: never idle for 1 s
    assert [ws.recv() for _ in range(4)] == [f"push {index}" for index in range(4)]
    with pytest.raises(CLOSED):
        ws.recv()                  # then 1 s of silence both ways: closed
    proxy.wait_for(r"tunnel closed: .*closed_by=idle")


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_gives_a_tunnel_the_grace_period_then_closes_it(start, ws_backend, server):
    proxy = start(server, base_config([ws_backend.url], shutdown_timeout="1s", **NO_CHECKS))
    ws = open_ws(proxy)
    proxy.signal(signal.SIGTERM)
    proxy.wait_for(SIGTERM_SEEN[server])
    ws.send("still here")          # the tunnel lives on through the grace period
    assert ws.recv() == "still here"
    with pytest.raises(CLOSED):
        ws.recv()                  # and is closed when it ends
    assert proxy.wait(timeout=15) == 0
    if server == "wsgi.py":
        assert "closed_by=shutdown" in proxy.output


@pytest.mark.parametrize("server", SERVERS)
def test_a_reload_leaves_open_tunnels_alone(start, write_config, ws_backend, server):
    other = WebSocketBackend("two").start()
    try:
        proxy = start(server, base_config([ws_backend.url], **NO_CHECKS))
        ws = open_ws(proxy)
        assert ws.getheaders()["x-backend"] == "one"
        write_config(base_config([other.url], **NO_CHECKS, timeouts={"tunnel_idle": "5s"}))
        proxy.signal(signal.SIGHUP)
        proxy.wait_for(r"config reloaded")
        ws.send("after the reload")    # its backend is gone from the config: it carries on
        assert ws.recv() == "after the reload"
        fresh = open_ws(proxy)         # new tunnels follow the new list
        assert fresh.getheaders()["x-backend"] == "two"
        for client in (ws, fresh):
            client.close()
    finally:
        other.stop()
