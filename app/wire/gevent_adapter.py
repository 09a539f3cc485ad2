"""gevent's socket internals, in one place: each name below is one gevent keeps to itself,
reached here and nowhere else, for gevent 26.9 (``requirements-runtime.txt`` pins it).
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

It knows nothing of HTTP, servers or backends: ``sockets``, ``watch`` and
``app.server.tls`` use it.
"""
from __future__ import annotations


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
