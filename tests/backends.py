"""Real backend servers for tests: pywsgi on 127.0.0.1 port 0, recording what they receive.

``TestBackend`` answers by path:

- ``/status/CODE``          that status, with a short body
- ``/slow?seconds=S``       waits S seconds, then answers 200
- ``/echo``                 the request body back
- ``/bytes?n=N``            N bytes of ``x`` (streamed in 64 KiB pieces when ``chunked`` is in the query)
- ``/cookie``               two ``Set-Cookie`` lines
- ``/redirect``             302 to ``/elsewhere``
- ``/gzip``                 a gzip body with ``Content-Encoding: gzip``
- anything else             200 ``backend NAME``

Each request is recorded (method, raw target, header lines, body) in ``requests``.
"""
from __future__ import annotations

import gzip
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIHandler, WSGIServer


@dataclass
class Seen:
    method: str
    target: str
    headers: list
    body: bytes = b""

    def header(self, name: str):
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if len(values) == 1 else (values or None)


class _Handler(WSGIHandler):
    def handle(self):
        sock = self.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sockets.add(sock)
        try:
            super().handle()
        finally:
            self.server.sockets.discard(sock)

    def get_environ(self):
        environ = super().get_environ()
        environ["RAW_URI"] = self.path
        environ["test.headers"] = list(self.headers._headers)
        return environ

    def log_request(self):
        pass


class TestBackend:
    __test__ = False

    def __init__(self, name: str = "b", port: int = 0, host: str = "127.0.0.1"):
        self.name = name
        self.port = port
        self.host = host         # any of 127.0.0.0/8 (or ::1): several "hosts" share a port
        self.requests: list[Seen] = []
        self.release = Event()           # /wait blocks until this is set
        self.server = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "TestBackend":
        self.server = WSGIServer((self.host, self.port), self.app, handler_class=_Handler,
                                 log=None, error_log=None)
        self.server.sockets = set()
        self.server.start()
        self.port = self.server.server_port
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for sock in list(self.server.sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.server.stop(timeout=1)
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        path = environ["PATH_INFO"]
        self.requests.append(Seen(environ["REQUEST_METHOD"], environ["RAW_URI"],
                                  environ["test.headers"], body))
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            payload = b"" if code in (204, 304) else f"status {code}".encode()
            start_response(f"{code} X", [("Content-Length", str(len(payload)))]
                           if code not in (204, 304) else [])
            return [payload]
        if path == "/slow":
            gevent.sleep(float(query.get("seconds", "1")))
            return self._text(start_response, f"slow {self.name}")
        if path == "/wait":
            self.release.wait(timeout=30)
            return self._text(start_response, f"waited {self.name}")
        if path == "/echo":
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/bytes":
            size = int(query.get("n", "0"))
            if "chunked" in query:
                start_response("200 OK", [("Content-Type", "application/octet-stream")])
                return _pieces(size)
            start_response("200 OK", [("Content-Length", str(size))])
            return _pieces(size)
        if path == "/cookie":
            start_response("200 OK", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
                                      ("Content-Length", "2")])
            return [b"ok"]
        if path == "/redirect":
            start_response("302 Found", [("Location", "/elsewhere"), ("Content-Length", "0")])
            return [b""]
        if path == "/gzip":
            payload = gzip.compress(b"hello gzip " * 100)
            start_response("200 OK", [("Content-Encoding", "gzip"),
                                      ("Content-Length", str(len(payload)))])
            return [payload]
        return self._text(start_response, f"backend {self.name}")

    @staticmethod
    def _text(start_response, text: str):
        payload = text.encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(payload)))])
        return [payload]


def _pieces(size: int):
    piece = b"x" * 65536
    while size > 0:
        chunk = piece[:min(size, len(piece))]
        size -= len(chunk)
        yield chunk


def free_port() -> int:
    """A port that nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        gevent.sleep(interval)
