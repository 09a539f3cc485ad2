"""Raw HTTP over real sockets, for tests that care about exact bytes and connections."""
from __future__ import annotations

import json
import socket


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, head: bool = False) -> tuple[int, dict, bytes]:
    """Read one response (status, lower-cased headers, body) using its own framing."""
    reader = sock.makefile("rb")
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if head or status in (204, 304) or status < 200:
        pass
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                reader.readline()
                break
            body += reader.read(size)
            reader.readline()
    elif "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
    else:
        body = reader.read()
    return status, headers, body


def request(port: int, raw: bytes, head: bool = False, timeout: float = 10.0):
    """Send raw bytes on a new connection and read one response."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        return read_response(sock, head=head)


def get(port: int, target: str = "/", headers: str = "") -> tuple[int, dict, bytes]:
    return request(port, f"GET {target} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n"
                   .encode("latin-1"))


def queue_depth(port: int) -> int:
    """The requests waiting in the proxy's queues (max_conns), as ``/status`` says: the
    group's under gunicorn; -1 when it does not answer 200."""
    status, _, body = get(port, "/_myproxy/status")
    if status != 200:
        return -1
    return sum(route["queue"]["depth"] for route in json.loads(body)["routes"])


def read_all(sock) -> bytes:
    """Every byte until the peer closes the connection (within the socket's timeout)."""
    received = b""
    while data := sock.recv(65536):
        received += data
    return received
