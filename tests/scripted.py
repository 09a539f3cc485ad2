"""Raw-socket backends that misbehave on purpose, for failover tests.

A ``ScriptedBackend`` reads HTTP/1.1 requests itself and does what its script says for
each one. The script is an action, or a function ``(nth_request, nth_on_connection) ->
action``. Actions:

- ``ok``            200 with the backend's name as the body; the connection stays open
- ``ok-close``      the same, then closes the connection (as a keep-alive timeout would)
- ``close``         reads the request, closes without answering
- ``accept-close``  closes as soon as the connection is accepted, reading nothing
- ``reset``         reads the request, answers with a TCP reset
- ``reset-early``   reads the request head, resets before reading the body
- ``hang``          reads the request, never answers (until ``stop``)
- ``slow:S``        waits S seconds before the first byte, then ``ok``
- ``partial``       headers saying 100 bytes, 10 bytes, then closes
- ``stall``         headers saying 100 bytes, 10 bytes, then never sends the rest
- ``garbage``       answers bytes that are no HTTP response, then closes (as stray bytes a
                    backend wrote after its last response would read to the next request)

``requests`` records every request head read (method, target, body if read);
``connections`` counts accepted connections.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import gevent
from gevent.event import Event
from gevent.server import StreamServer


@dataclass
class Request:
    method: str
    target: str
    body: bytes | None      # None when the script did not read it


class ScriptedBackend:
    __test__ = False

    def __init__(self, script="ok", name="scripted"):
        self.script = script
        self.name = name
        self.requests: list[Request] = []
        self.connections = 0
        self._release = Event()
        self._sockets: set = set()
        self.server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self, target: str = None) -> int:
        """How many requests (for ``target``, if given) reached this backend."""
        return sum(1 for r in self.requests if target is None or r.target == target)

    def start(self) -> "ScriptedBackend":
        self.server = StreamServer(("127.0.0.1", self.port), self._handle)
        self.server.start()
        self.port = self.server.server_port
        return self

    def stop(self) -> None:
        self._release.set()
        if self.server is not None:
            self.server.close()
            for sock in list(self._sockets):
                sock.close()
            self.server.stop(timeout=1)
            self.server = None

    def _action(self, nth_on_connection: int) -> str:
        if callable(self.script):
            return self.script(len(self.requests) - 1, nth_on_connection)
        return self.script

    def _handle(self, sock, address) -> None:
        self.connections += 1
        self._sockets.add(sock)
        try:
            if self.script == "accept-close":
                return
            reader = sock.makefile("rb")
            for nth in range(1000):
                head = _read_head(reader)
                if head is None:
                    return
                method, target, headers = head
                request = Request(method, target, None)
                self.requests.append(request)
                action = self._action(nth)
                if action == "reset-early":
                    return _reset(sock)
                request.body = _read_body(reader, headers)
                if not self._act(sock, action):
                    return
        finally:
            self._sockets.discard(sock)
            sock.close()

    def _act(self, sock, action: str) -> bool:
        """Answer one request; False when the connection is to be closed."""
        if action.startswith("slow:"):
            gevent.sleep(float(action[5:]))
            action = "ok"
        if action in ("ok", "ok-close"):
            body = self.name.encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return action == "ok"
        if action == "reset":
            _reset(sock)
        elif action == "hang":
            self._release.wait(timeout=60)
        elif action == "garbage":
            sock.sendall(b"64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n")
        elif action in ("partial", "stall"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            if action == "stall":
                self._release.wait(timeout=60)
        return False


def _read_head(reader):
    line = reader.readline()
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return method, target, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


def _read_body(reader, headers) -> bytes:
    if "content-length" in headers:
        return reader.read(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                reader.readline()
                return body
            body += reader.read(size)
            reader.readline()
    return b""


def _reset(sock) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FullBacklog:
    """A listening port whose accept queue is full, so a new connection attempt hangs
    until the client's connect timeout: a backend too busy to accept."""

    __test__ = False

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._fillers = []
        filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        self._fillers.append(filler)

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self.listener.close()
