"""``app.server.gunicorn_adapter``: each gunicorn internal it relies on, pinned by name.

gunicorn's own gevent worker code serves real sockets here, in this process (its ``run``
makes a ``StreamServer`` calling ``handle`` for each connection: so does ``serve``), so
that each pin is seconds, not a gunicorn start. A gunicorn bump that changes one of them
fails here first; ``test_gunicorn.py`` proves the whole, with real gunicorn processes.
"""
import os
import socket
import ssl
import time
from functools import partial

import gevent
import pytest
from gevent.server import StreamServer
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger

from app.server.gunicorn_adapter import (ALREADY_HANDLED, WORKER_BOOT_ERROR, GeventWorker,
                                         force_close, header_values, inherits_sockets,
                                         ssl_context, take_connection, time_request_waits,
                                         watch_serving)
from tests.certs import make_certificate
from tests.rawclient import connect, read_all, read_response

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def ok(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def worker():
    """gunicorn's gevent worker, as an arbiter would make it, with ``ok`` as its app."""
    cfg = Config()
    cfg.set("keepalive", 5)
    made = GeventWorker(age=1, ppid=os.getpid(), sockets=[], app=None, timeout=30, cfg=cfg,
                        log=Logger(cfg))
    made.wsgi = ok
    yield made
    made.tmp.close()


@pytest.fixture
def serve():
    """Serve with ``worker`` as ``GeventWorker.run`` does: ``partial(worker.handle,
    listener)`` for each accepted connection, bound once at start."""
    servers = []

    def start(worker):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        server = StreamServer(listener, handle=partial(worker.handle, listener))
        server.start()
        servers.append(server)
        return listener.getsockname()[1]

    yield start
    for server in servers:
        server.stop(timeout=1)


class Watcher:
    """What ``watch_serving`` tells, in order."""

    def __init__(self):
        self.events = []
        self.requests = []

    def opened(self, client):
        self.events.append("opened")

    def closed(self, client):
        self.events.append("closed")

    def request_started(self, req, client):
        self.events.append("started")
        self.requests.append(req)

    def request_done(self, client):
        self.events.append("done")


def test_timeout_ctx_is_made_for_each_wait_for_a_request_head(worker, serve):
    made = []

    def timer():
        made.append(time.monotonic())
        return gevent.Timeout(5, False)

    time_request_waits(worker, timer)
    port = serve(worker)
    with connect(port) as sock:
        for _ in range(3):                  # one kept-alive connection, three requests
            sock.sendall(GET)
            assert read_response(sock)[2] == b"ok"
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""
    assert len(made) == 4                   # three heads, and the wait that found the end


def test_a_timeout_ctx_timeout_ends_an_idle_connection_quietly(worker, serve):
    time_request_waits(worker, lambda: gevent.Timeout(0.1, False))
    port = serve(worker)
    with connect(port, timeout=5) as sock:
        sock.sendall(GET)
        assert read_response(sock)[2] == b"ok"
        started = time.monotonic()
        assert read_all(sock) == b""        # closed, nothing written
        assert time.monotonic() - started < 3


def test_handle_and_handle_request_are_looked_up_on_the_worker_around_each_connection_and_request(
        worker, serve):
    watcher = Watcher()
    watch_serving(worker, watcher)          # before the server binds worker.handle, as
    port = serve(worker)                    # post_worker_init runs before run()
    with connect(port) as sock:
        for _ in range(2):
            sock.sendall(GET)
            assert read_response(sock)[2] == b"ok"
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b""        # handle closed the connection
    assert watcher.events == ["opened", "started", "done", "started", "done", "closed"]


def test_a_requests_headers_are_its_fields_with_upper_cased_names(worker, serve):
    watcher = Watcher()
    watch_serving(worker, watcher)
    port = serve(worker)
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n"
                     b"connection: te\r\nTE: trailers\r\n\r\n")
        read_response(sock)
    req = watcher.requests[0]
    assert ("CONNECTION", "keep-alive") in req.headers
    assert header_values(req, "Connection") == ["keep-alive", "te"]


def test_force_close_before_the_response_closes_the_connection_after_it(worker, serve):
    class Closing(Watcher):
        def request_started(self, req, client):
            super().request_started(req, client)
            force_close(req)

    watch_serving(worker, Closing())
    port = serve(worker)
    with connect(port) as sock:
        sock.sendall(GET + GET)             # the second one is never served
        status, headers, body = read_response(sock)
        assert (status, body, headers["connection"]) == (200, b"ok", "close")
        assert read_all(sock) == b""


def test_force_close_while_the_app_runs_closes_the_connection_after_its_response(worker, serve):
    watcher = Watcher()
    watch_serving(worker, watcher)

    def app(environ, start_response):
        force_close(watcher.requests[-1])   # as a SIGTERM does to the requests in flight
        return ok(environ, start_response)

    worker.wsgi = app
    port = serve(worker)
    with connect(port) as sock:
        sock.sendall(GET + GET)
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"]) == (200, "close")
        assert read_all(sock) == b""
    assert len(watcher.requests) == 1


def test_already_handled_makes_gunicorn_write_nothing_for_the_request(worker, serve):
    watcher = Watcher()
    watch_serving(worker, watcher)

    def app(environ, start_response):
        environ["gunicorn.socket"].sendall(b"written by the app")
        return ALREADY_HANDLED

    worker.wsgi = app
    port = serve(worker)
    with connect(port) as sock:
        sock.sendall(GET)
        sock.shutdown(socket.SHUT_WR)       # as a tunnel ends: the connection ends with it
        assert read_all(sock) == b"written by the app"
    assert watcher.events == ["opened", "started", "done", "closed"]


@pytest.mark.parametrize("framing,body", [
    (b"Content-Length: 4\r\n", b"body"),
    (b"Transfer-Encoding: chunked\r\n", b"4\r\nbody\r\n0\r\n\r\n"),
    (b"", b""),
], ids=["length", "chunked", "no-body"])
def test_take_connection_returns_the_read_ahead_first_then_the_socket(worker, serve, framing,
                                                                      body):
    seen = {}

    def app(environ, start_response):
        seen["body"] = environ["wsgi.input"].read()
        client = take_connection(environ["gunicorn.socket"], environ["wsgi.input"])
        seen["early"] = client.read(100)    # already read by gunicorn: no wait
        client.socket.sendall(b"switched")
        seen["later"] = client.read(100)
        seen["handled"] = client.handled
        return client.handled

    worker.wsgi = app
    port = serve(worker)
    with connect(port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\n" + framing + b"\r\n" + body + b"EARLY")
        assert sock.recv(100) == b"switched"
        sock.sendall(b"LATER")
        sock.shutdown(socket.SHUT_WR)       # the tunnel's end: gunicorn then closes
        assert read_all(sock) == b""
    assert seen == {"body": b"body" if framing else b"", "early": b"EARLY", "later": b"LATER",
                    "handled": ALREADY_HANDLED}


def test_ssl_context_is_the_one_gunicorn_serves_with_its_hooks_when_set(tmp_path):
    cert, key = make_certificate(tmp_path, "server", ["localhost"])
    cfg = Config()
    cfg.set("certfile", cert)
    cfg.set("keyfile", key)
    default = ssl_context(cfg)
    assert isinstance(default, ssl.SSLContext)
    assert default.cert_store_stats() is not None
    mine = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cfg.set("ssl_context", lambda conf, factory: mine)
    assert ssl_context(cfg) is mine


class _App(BaseApplication):
    def load_config(self):
        pass

    def load(self):
        return ok


def test_inherits_sockets_from_an_old_master_or_from_systemd(monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("GUNICORN_PID", raising=False)
    monkeypatch.setenv("SERVER_SOFTWARE", "")       # the arbiter sets it
    arbiter = Arbiter(_App())
    assert arbiter.master_pid == 0
    assert not inherits_sockets(arbiter)
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert inherits_sockets(arbiter)
    assert os.environ["LISTEN_FDS"] == "1"           # left for the workers
    monkeypatch.delenv("LISTEN_FDS")
    arbiter.master_pid = 1234                        # re-executed by an old master (USR2)
    assert inherits_sockets(arbiter)


def test_worker_boot_error_is_the_arbiters():
    assert WORKER_BOOT_ERROR == Arbiter.WORKER_BOOT_ERROR
