"""Two gevent socket calls with less work than gevent's own, for the client side and the
backend side alike. It knows nothing of HTTP.
"""
from __future__ import annotations

import socket

import gevent


def send_all(sock, data) -> None:
    """``sock.sendall(data)``, but one plain ``send`` when the kernel takes it all (nearly
    always for a head or a small body): gevent's ``sendall`` asks the socket for its
    buffer size with a ``getsockopt`` call on every call. The rest, if any, goes through
    ``sendall``, with its timeout."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def wait_readable(sock) -> None:
    """Wait until ``sock`` has bytes (or EOF) to read, within its timeout.

    What gevent's ``recv`` does after a read found nothing, without that first read: right
    after a request goes out, its answer is never in yet, and the read that says so is a
    system call and an exception per request. A socket that is not gevent's is left to its
    own ``recv``.
    """
    wait = getattr(sock, "_wait", None)
    if wait is not None:
        wait(sock._read_event)


def linger(sock, seconds: float, most: int) -> None:
    """Stop sending, then read and drop what the peer still sends (at most ``most`` bytes,
    for at most ``seconds``), so that it reads the answer just sent instead of a reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        left = most
        with gevent.Timeout(seconds, False):
            while left > 0:
                data = sock.recv(65536)
                if not data:
                    break
                left -= len(data)
    except OSError:
        pass
