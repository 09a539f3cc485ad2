"""Raw-socket test servers: a backend that records the exact bytes of every request it
receives, and a tripwire listener the proxy must never connect to.

``RawBackend(respond)`` answers each request with what ``respond(received)`` returns:
bytes, or an iterable of bytes written piece by piece, in which ``CLOSE`` cuts the
connection at once (a backend dying mid-response). By default it answers ``200 ok``.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

from gevent.server import StreamServer

CLOSE = object()        # in a response iterable: close the connection here
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Received:
    """One request as the backend read it off the wire."""

    head: bytes                      # request line and header lines, up to the empty line
    body: bytes = b""                # the body bytes as framed on the wire (chunk lines too)
    complete: bool = False           # the whole body arrived
    ended: bool = False              # reading it is over: complete, or the connection ended
    lines: list = field(default_factory=list)

    @property
    def request_line(self) -> str:
        return self.lines[0]

    @property
    def target(self) -> str:
        return self.lines[0].split(" ")[1]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(n, v.strip()) for n, _, v in (line.partition(":") for line in self.lines[1:])]

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class RawBackend:
    __test__ = False

    def __init__(self, respond=None):
        self.respond = respond or (lambda received: OK)
        self.received: list[Received] = []
        self.connections = 0
        self.broken_writes = 0          # responses the peer stopped taking before their end
        self.server = StreamServer(("127.0.0.1", 0), self._serve)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> "RawBackend":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _serve(self, sock, _address) -> None:
        self.connections += 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        try:
            while True:
                received = _read_request(reader, self.received.append)
                if received is None:
                    return
                received.ended = True
                if not received.complete:
                    return
                answer = self.respond(received)
                try:
                    for piece in ([answer] if isinstance(answer, bytes) else answer):
                        if piece is CLOSE:
                            return
                        sock.sendall(piece)
                except OSError:
                    self.broken_writes += 1
                    return
        except OSError:
            return
        finally:
            reader.close()
            sock.close()


def _read_request(reader, record) -> Received | None:
    """Read one request, recording it (``record``) as soon as its head is in."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline(65536 * 4)
        if not line:
            return None
        head += line
    lines = head[:-4].decode("latin-1").split("\r\n")
    received = Received(head, lines=lines)
    record(received)
    length = [v for n, v in received.headers if n.lower() == "content-length"]
    chunked = any(v.lower() == "chunked" for n, v in received.headers
                  if n.lower() == "transfer-encoding")
    if chunked:
        while True:
            size_line = reader.readline()
            received.body += size_line
            if not size_line.endswith(b"\r\n"):
                received.complete = False
                return received
            size = int(size_line.split(b";")[0], 16)
            data = reader.read(size + 2)
            received.body += data
            if len(data) < size + 2:
                received.complete = False
                return received
            if size == 0:
                received.complete = True
                return received
    if length:
        received.body = reader.read(int(length[0]))
        received.complete = len(received.body) == int(length[0])
        return received
    received.complete = True
    return received


class Tripwire:
    """A listener that counts every connection made to it: the proxy must make none."""

    __test__ = False

    def __init__(self):
        self.hits = 0
        self.server = StreamServer(("127.0.0.1", 0), self._hit)

    @property
    def port(self) -> int:
        return self.server.server_port

    def start(self) -> "Tripwire":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _hit(self, sock, _address) -> None:
        self.hits += 1
        sock.close()


def read_until_closed(sock, timeout: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                return data
            data += piece
    except ConnectionResetError:
        return data


def statuses(data: bytes) -> list[int]:
    """The status codes of the responses in ``data`` (final and interim), in order."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
