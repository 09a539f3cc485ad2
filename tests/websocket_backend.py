"""A real WebSocket backend for tests: gevent's StreamServer on 127.0.0.1 port 0.

It speaks just enough HTTP/1.1 and RFC 6455 to be a faithful far end of a tunnel:

- ``Upgrade: websocket`` with a ``Sec-WebSocket-Key``: ``101`` and a WebSocket echo. Text
  commands change that: ``close`` (the backend closes: close frame 1000, then TCP),
  ``push N SECONDS`` (N text messages, one every SECONDS, unasked), ``delay SECONDS TEXT``
  (TEXT after a pause), ``drop`` (the backend closes TCP with no close frame);
- ``Upgrade: echo`` (any other protocol): ``101``, then every byte echoed as it comes;
- ``/deny`` with an upgrade: ``403`` with a body, the connection kept for more requests;
- ``/drop`` with an upgrade: the connection closed without an answer;
- anything else: ``200 ws NAME``, keep-alive.

Every request is recorded in ``requests`` (a ``tests.backends.Seen``); ``open`` counts the
upgraded connections now open and ``most_open`` the most at once; ``ended`` records how
each upgraded connection ended (``"close frame"``, ``"eof"``, ``"backend close"``).
"""
from __future__ import annotations

import base64
import hashlib
import socket
import struct

import gevent
from gevent.server import StreamServer

from tests.backends import Seen

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   # RFC 6455 §1.3
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
MAX_HEAD = 64 * 1024


class WebSocketBackend:
    __test__ = False

    def __init__(self, name: str = "ws", ssl_context=None):
        self.name = name
        self.ssl_context = ssl_context     # serve TLS with this server-side context
        self.requests: list[Seen] = []
        self.open = 0
        self.most_open = 0
        self.ended: list[str] = []
        self.server = None
        self.port = None
        self._sockets: set = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "WebSocketBackend":
        extra = {"ssl_context": self.ssl_context} if self.ssl_context else {}
        self.server = StreamServer(("127.0.0.1", self.port or 0), self._serve, **extra)
        self.server.start()
        self.port = self.server.server_port
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for sock in list(self._sockets):
                _shutdown(sock)
            self.server.stop(timeout=1)
            self.server = None

    def _serve(self, sock, _address) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sockets.add(sock)
        reader = sock.makefile("rb")
        try:
            while self._serve_one(sock, reader):
                pass
        except OSError:
            pass
        finally:
            self._sockets.discard(sock)
            reader.close()
            _shutdown(sock)

    def _serve_one(self, sock, reader) -> bool:
        """Answer one request; True to read another on this connection."""
        head = reader.readline(MAX_HEAD)
        if not head:
            return False
        method, target, _version = head.decode("latin-1").split(" ", 2)
        headers = []
        while True:
            line = reader.readline(MAX_HEAD).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        seen = Seen(method, target, headers)
        if (seen.header("Transfer-Encoding") or "").lower() == "chunked":
            seen.body = _read_chunked(reader)
        else:
            length = int(seen.header("Content-Length") or 0)
            seen.body = reader.read(length) if length else b""
        self.requests.append(seen)
        upgrade = (seen.header("Upgrade") or "").lower()
        if upgrade and target == "/drop":
            return False
        if upgrade and target == "/deny":
            sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 7\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\ndenied\n")
            return True
        if upgrade == "websocket" and seen.header("Sec-WebSocket-Key"):
            self._tunnel(sock, self._websocket, reader, seen)
            return False
        if upgrade:
            sock.sendall(f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         f"Upgrade: {seen.header('Upgrade')}\r\n\r\n".encode("latin-1"))
            self._tunnel(sock, self._echo_bytes, reader, seen)
            return False
        body = f"ws {self.name}".encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    def _tunnel(self, sock, run, reader, seen) -> None:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            self.ended.append(run(sock, reader, seen))
        except OSError:
            self.ended.append("eof")
        finally:
            self.open -= 1

    @staticmethod
    def _echo_bytes(sock, reader, _seen) -> str:
        while True:
            data = reader.read1(65536)
            if not data:
                return "eof"
            sock.sendall(data)

    def _websocket(self, sock, reader, seen) -> str:
        key = seen.header("Sec-WebSocket-Key").encode()
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
        sock.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                     f"X-Backend: {self.name}\r\n\r\n".encode())
        while True:
            message = read_message(reader)
            if message is None:
                return "eof"
            opcode, payload = message
            if opcode == CLOSE:
                sock.sendall(frame(CLOSE, payload[:2]))
                return "close frame"
            if opcode == PING:
                sock.sendall(frame(PONG, payload))
                continue
            words = payload.split(b" ", 2) if opcode == TEXT else [b""]
            if words[0] == b"close":
                sock.sendall(frame(CLOSE, struct.pack("!H", 1000)))
                return "backend close"
            if words[0] == b"drop":
                return "backend close"
            if words[0] == b"push":
                gevent.spawn(self._push, sock, int(words[1]), float(words[2]))
            elif words[0] == b"delay":
                gevent.sleep(float(words[1]))
                sock.sendall(frame(TEXT, words[2]))
            else:
                sock.sendall(frame(opcode, payload))

    @staticmethod
    def _push(sock, count: int, every: float) -> None:
        try:
            for index in range(count):
                gevent.sleep(every)
                sock.sendall(frame(TEXT, b"push %d" % index))
        except OSError:
            pass


def read_message(reader) -> tuple[int, bytes] | None:
    """One whole message (continuation frames joined), or None at end of stream."""
    opcode, parts = None, []
    while True:
        head = reader.read(2)
        if len(head) < 2:
            return None
        fin, code, masked, length = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", reader.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", reader.read(8))[0]
        mask = reader.read(4) if masked else b""
        payload = reader.read(length)
        if len(payload) < length:
            return None
        if mask:
            payload = unmask(payload, mask)
        if code >= 0x8:                       # control frames may come between fragments
            return code, payload
        opcode = code if code != CONTINUATION else opcode
        parts.append(payload)
        if fin:
            return opcode, b"".join(parts)


def _read_chunked(reader) -> bytes:
    body = b""
    while True:
        size = int(reader.readline(MAX_HEAD).split(b";")[0], 16)
        if size == 0:
            reader.readline(MAX_HEAD)
            return body
        body += reader.read(size)
        reader.readline(MAX_HEAD)


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked final frame, as a server sends it."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return head + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, as one big integer (fast for megabytes)."""
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
