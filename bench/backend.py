"""A small, fast HTTP/1.1 backend for the benchmark: ``python -m bench.backend --root DIR PORT...``.

Used where nginx is not installed, and by ``bench/memory.py`` for bodies nginx's static
module does not take. On every port it answers, with keep-alive:

- ``GET /NAME``                  the file ``DIR/NAME`` (read once at start)
- ``POST /upload``               reads the body, answers its length in bytes
- ``GET /download?bytes=N``      N zero bytes, with ``Content-Length``, written 1 MiB at a time

It parses only what the benchmark sends (``Content-Length`` bodies, no chunked requests):
it is a load generator's counterpart, not a server for anything else.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from gevent.server import StreamServer

MAX_HEAD = 64 * 1024
PIECE = 1024 * 1024
_ZEROS = bytes(PIECE)


def serve_connection(sock, files: dict[bytes, bytes]) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # STACK-FACTS 13
    buffered = b""
    while True:
        while b"\r\n\r\n" not in buffered:
            data = sock.recv(65536)
            if not data or len(buffered) > MAX_HEAD:
                return
            buffered += data
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, version = (lines[0].split(b" ", 2) + [b"", b""])[:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            sock.sendall(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        length = int(headers.get(b"content-length", b"0"))
        taken = min(length, len(buffered))
        buffered, remaining = buffered[taken:], length - taken
        while remaining:
            data = sock.recv(min(remaining, PIECE))
            if not data:
                return
            remaining -= len(data)
        path, _, query = target.partition(b"?")
        if method == b"POST" and path == b"/upload":
            _answer(sock, 200, str(length).encode())
        elif path == b"/download":
            _download(sock, int(query.partition(b"bytes=")[2].split(b"&")[0] or b"0"))
        elif path in files:
            _answer(sock, 200, files[path], head_only=method == b"HEAD")
        else:
            _answer(sock, 404, b"not found\n")
        if version != b"HTTP/1.1" or headers.get(b"connection", b"").lower() == b"close":
            return


def _answer(sock, status: int, body: bytes, head_only: bool = False) -> None:
    reason = b"OK" if status == 200 else b"Not Found"
    sock.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Length: %d\r\n\r\n" % (status, reason, len(body))
                 + (b"" if head_only else body))


def _download(sock, size: int) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Length: %d\r\n\r\n" % size)
    view = memoryview(_ZEROS)
    while size > 0:
        piece = min(size, PIECE)
        sock.sendall(view[:piece])
        size -= piece


def load_files(root: str) -> dict[bytes, bytes]:
    files = {}
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name), "rb") as handle:
            files[b"/" + name.encode()] = handle.read()
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend")
    parser.add_argument("--root", required=True, help="directory of files to serve")
    parser.add_argument("ports", nargs="+", type=int)
    args = parser.parse_args(argv)
    files = load_files(args.root)

    def handle(sock, address):
        try:
            serve_connection(sock, files)
        except OSError:
            pass            # the client went away: nothing to answer
        finally:
            sock.close()

    servers = [StreamServer(("127.0.0.1", port), handle, backlog=1024) for port in args.ports]
    for server in servers:
        server.start()
    print(f"bench backend listening on ports {' '.join(map(str, args.ports))}", flush=True)
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
