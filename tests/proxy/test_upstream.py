"""``Upstream``: what the upstream client does beyond one exchange (see test_exchange.py)."""
import socket
import ssl

import gevent
import gevent.event
import pytest

from app.errors import UpstreamError
from app.proxy.transport import Upstream
from tests.backends import wait_until
from tests.proxy.test_tunnel_inprocess import certificate  # noqa: F401 - fixture


def test_a_member_found_through_dns_is_verified_for_its_name_not_its_address(certificate):  # noqa: F811
    # A TLS server on 127.0.0.2 that records the name the client asks for (SNI).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    asked = []
    context.sni_callback = lambda sock, name, ctx: asked.append(name)
    listener = _listen("127.0.0.2")

    def serve():
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass                     # the client refuses our self-signed certificate
        finally:
            conn.close()
    server = gevent.spawn(serve)
    origin = f"https://127.0.0.2:{listener.getsockname()[1]}"
    upstream = Upstream()
    upstream.name_origin(origin, "a.api.test")
    try:
        with pytest.raises(UpstreamError):
            upstream.send(origin, "GET", "/", [("Host", "a.api.test")])
        server.join(timeout=5)
    finally:
        listener.close()
    assert asked == ["a.api.test"]
    assert upstream.pool(origin).server_name == "a.api.test"


def _listen(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port of ``host``: a backend the test answers by hand."""
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen()
    return listener


def _read_head(conn) -> bytes:
    """Read one request head off ``conn`` (and whatever came with it)."""
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    return head


@pytest.mark.parametrize("backend_does", ["close", "stray bytes"])
def test_an_idle_pooled_connection_is_closed_when_the_backend_closes_or_writes(backend_does):
    listener = _listen()
    answered, idle_over = gevent.event.Event(), gevent.event.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            head = _read_head(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            answered.set()
            idle_over.wait(timeout=5)
            if backend_does == "stray bytes":
                conn.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
                idle_over.clear()
                idle_over.wait(timeout=5)      # kept open: only the bytes tell
    server = gevent.spawn(serve)
    origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
    upstream = Upstream()
    try:
        response = upstream.send(origin, "GET", "/", [("Host", "t")])
        assert response.read1() == b"ok" and response.complete
        pooled = upstream.pool(origin).idle
        assert len(pooled) == 1 and pooled[0].sock is not None
        assert answered.wait(timeout=5)
        gevent.sleep(0.05)
        assert pooled[0].sock is not None          # idle and quiet: kept
        idle_over.set()
        assert wait_until(lambda: pooled[0].sock is None, timeout=5)   # with no request made
    finally:
        idle_over.set()
        server.join(timeout=5)
        listener.close()
        upstream.close()


def test_a_request_that_says_connection_close_never_leaves_its_connection_in_the_pool():
    # The backend answers as if the connection lasted (no Connection: close of its own).
    listener = _listen()
    done = gevent.event.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            head = _read_head(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            done.wait(timeout=5)
    server = gevent.spawn(serve)
    origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
    upstream = Upstream()
    try:
        response = upstream.send(origin, "GET", "/", [("Host", "t"), ("Connection", "close")],
                                 keep_alive=False)
        assert response.read1() == b"ok" and response.complete
        assert all(conn.sock is None for conn in upstream.pool(origin).idle)
    finally:
        done.set()
        server.join(timeout=5)
        listener.close()
        upstream.close()


def test_a_post_never_takes_a_connection_the_backend_closed_before_the_watcher_heard_of_it():
    # The backend closes its side between two requests, and the POST goes out before the
    # event loop turns (so before the idle watcher can close the pooled connection).
    listener = _listen()
    accepted, done = [], gevent.event.Event()

    def serve():
        while len(accepted) < 2:
            conn, _ = listener.accept()
            accepted.append(conn)
            head = _read_head(conn)
            if head.startswith(b"POST"):
                while not head.endswith(b"x"):
                    head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        done.wait(timeout=5)
    server = gevent.spawn(serve)
    origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
    upstream = Upstream()
    try:
        first = upstream.send(origin, "GET", "/", [("Host", "t")])
        assert first.read1() == b"ok" and first.complete
        first.release_conn()
        accepted[0].close()            # no yield from here to the send below
        second = upstream.send(origin, "POST", "/pay",
                               [("Host", "t"), ("Content-Length", "1")], body=[b"x"])
        assert second.read1() == b"ok"
        assert len(accepted) == 2      # it went on a new connection
    finally:
        done.set()
        server.join(timeout=5)
        listener.close()
        upstream.close()
