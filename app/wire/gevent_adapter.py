"""gevent's sockets as MyProxy uses them, in one place: the socket calls with less work
than gevent's own (``send_all``, ``set_timeout``, ``wait_readable`` with a connection's
``ReadDeadline``, ``linger``), for the client side and the backend side alike, and the
gevent internals they and ``watch`` and ``app.server.tls`` rely on. Each name below is one
gevent keeps to itself, reached here and nowhere else, for gevent 26.9 (``requirements-runtime.txt`` pins it).
``tests/wire/test_gevent_adapter.py`` pins each one by name, so a gevent bump that changes
one fails there first.

Relied on, on a gevent socket (``gevent._socket3.socket``, what ``socket.socket`` is once
patched):

- ``_read_event``: the socket's own read watcher, a libev io watcher on its descriptor,
  made with the socket; ``recv`` waits on it, and it fires when the socket is readable
  (bytes, or the peer's end of file). Its ``callback`` is set while a greenlet waits on it.
- ``_wait(watcher)``: gevent's wait on that watcher within the socket's timeout (raising
  ``socket.timeout``), refusing a second waiting greenlet (``ConcurrentObjectUseError``).
- ``hub``: the hub the socket's waits switch to; ``hub.wait(watcher)`` is the same wait
  with no timer.
- ``_sock``: the standard-library socket under it, whose calls skip gevent's wrappers
  (callable from the hub, where a gevent call that would block must not be made).

and on gevent's TLS socket (``gevent.ssl.SSLSocket``, which keeps it where the standard
library's does):

- ``_sslobj``: the connection's ``_ssl._SSLSocket``, whose ``shutdown`` sends close_notify
  without gevent's wait for the peer's own.

It knows nothing of HTTP, servers or backends.
"""
from __future__ import annotations

import socket

import gevent
from gevent import getcurrent
from gevent.exceptions import ConcurrentObjectUseError

from .http1 import READ_SIZE


def read_event(sock):
    """``sock``'s own read watcher, or None when ``sock`` is not a gevent socket (a plain
    or test socket, left to its own ``recv``)."""
    return getattr(sock, "_read_event", None)


def wait_with_timeout(sock, watcher) -> None:
    """Wait until ``watcher`` (``read_event(sock)``) fires, within ``sock``'s timeout:
    ``socket.timeout`` when it passes."""
    sock._wait(watcher)


def wait_without_timeout(sock, watcher) -> None:
    """Wait until ``watcher`` fires, with no timer of gevent's: the caller arms its own."""
    sock.hub.wait(watcher)


def std_socket(sock):
    """The standard-library socket under a gevent socket (``sock`` itself otherwise)."""
    return getattr(sock, "_sock", sock)


def tls_object(sock):
    """A TLS socket's low-level TLS connection (``shutdown()`` sends close_notify), or
    None for a socket that is not one."""
    return getattr(sock, "_sslobj", None)


def send_all(sock, data) -> None:
    """``sock.sendall(data)``, but one plain ``send`` when the kernel takes it all (nearly
    always for a head or a small body): gevent's ``sendall`` asks the socket for its
    buffer size with a ``getsockopt`` call on every call. The rest, if any, goes through
    ``sendall``, with its timeout."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def set_timeout(sock, seconds: float | None) -> None:
    """``sock.settimeout(seconds)``, skipped when it is set so already (gevent's costs a
    call chain): a kept-alive connection keeps one timeout from request to request."""
    if sock.timeout != seconds:
        sock.settimeout(seconds)


def wait_readable(sock, deadline: "ReadDeadline | None" = None) -> None:
    """Wait until ``sock`` has bytes (or EOF) to read, within its timeout.

    What gevent's ``recv`` does after a read found nothing, without that first read: right
    after a request goes out, its answer is never in yet, and the read that says so is a
    system call and an exception per request. A socket that is not gevent's is left to its
    own ``recv``. With ``deadline`` (the socket's timeout, as one timer kept with the
    connection), the wait arms that timer instead of making a ``gevent.Timeout``, its timer
    and its exception each time; it raises the same ``socket.timeout``.
    """
    watcher = read_event(sock)
    if watcher is None:
        return
    if deadline is None or sock.timeout != deadline.seconds:
        wait_with_timeout(sock, watcher)
        return
    if watcher.callback is not None:        # as gevent's own wait: one reader at a time
        raise ConcurrentObjectUseError(f"This socket is already used by another greenlet: "
                                       f"{watcher.callback!r}")
    timer = deadline.timer
    timer.again(_time_out, getcurrent())
    try:
        wait_without_timeout(sock, watcher)
    finally:
        timer.stop()


class ReadDeadline:
    """A read timeout of ``seconds`` as one libev timer, armed by each ``wait_readable``
    on a connection that keeps it; ``close`` it with the connection."""

    __slots__ = ("seconds", "timer")

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.timer = gevent.get_hub().loop.timer(seconds, seconds)

    def close(self) -> None:
        self.timer.stop()
        self.timer.close()


def _time_out(greenlet) -> None:
    # In the hub, as gevent.Timeout does: the greenlet is waiting right now.
    greenlet.throw(socket.timeout("timed out"))


def linger(sock, seconds: float, most: int) -> None:
    """Stop sending, then read and drop what the peer still sends (at most ``most`` bytes,
    for at most ``seconds``), so that it reads the answer just sent instead of a reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        left = most
        with gevent.Timeout(seconds, False):
            while left > 0:
                data = sock.recv(READ_SIZE)
                if not data:
                    break
                left -= len(data)
    except OSError:
        pass
