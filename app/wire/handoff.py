"""Taking the client connection over from the server, for a protocol upgrade.

A tunnel needs three things from whichever server runs the app: the client's socket, the
bytes the server already read past the request (a client may send the new protocol's
first bytes without waiting for the ``101``), and a way to tell the server that the
response was written by someone else, so it must write nothing more and must not read
another request from the connection. How depends on the server:

- ``python wsgi.py``: ``app.server.standalone.Handler`` puts ``myproxy.take_connection`` in environ,
  a callable that returns the socket and its buffered reader and makes the handler write
  nothing more and close the connection once the app returns.
- ``gunicorn -k gevent``: ``gunicorn.socket`` is the client socket, the request body's
  reader holds gunicorn's read-ahead, and returning gunicorn's ``ALREADY_HANDLED`` from the
  app stops the worker from writing a response of its own.

Under anything else (webtest, other servers) ``can_take`` is false and an upgrade request
is proxied as an ordinary request, which RFC 9110 §7.8 allows. This module knows nothing
of backends or of what flows through the tunnel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TAKE_CONNECTION = "myproxy.take_connection"   # set by app.server.standalone.Handler
GUNICORN_SOCKET = "gunicorn.socket"           # set by gunicorn's workers


@dataclass
class ClientConnection:
    """The client's side of a tunnel once the server has let go of it."""

    socket: Any                        # for writing, and for shutdown when the tunnel ends
    read: Callable[[int], bytes]       # up to n bytes, read-ahead first; b"" at end of stream
    handled: Any                       # what the WSGI app returns so the server writes nothing


def can_take(environ: dict) -> bool:
    """Whether the server running this request can hand its connection over."""
    if TAKE_CONNECTION in environ:
        return True
    return GUNICORN_SOCKET in environ and _gunicorn_handled() is not None


def take(environ: dict) -> ClientConnection:
    """Take the client connection from the server. Call once, after ``can_take``.

    The socket is made blocking with no timeout: from now on the tunnel decides when an
    idle connection is closed. The server closes the socket after the app returns.
    """
    if TAKE_CONNECTION in environ:
        sock, reader = environ[TAKE_CONNECTION]()
        sock.settimeout(None)
        return ClientConnection(sock, reader.read1, [])
    sock = environ[GUNICORN_SOCKET]
    sock.settimeout(None)
    # gunicorn keeps its read-ahead in the request's Unreader, reached through the body
    # reader (gunicorn 27; the tests pin it and would catch a rename).
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    unreader = getattr(reader, "unreader", None) or \
        getattr(getattr(reader, "req", None), "unreader", None)     # chunked: via the request
    pending = unreader.take_buffered() if hasattr(unreader, "take_buffered") else b""

    def read(size: int) -> bytes:
        nonlocal pending
        if pending:
            data, pending = pending[:size], pending[size:]
            return data
        return sock.recv(size)

    return ClientConnection(sock, read, _gunicorn_handled())


def _gunicorn_handled():
    """gunicorn's marker for "the app wrote the response itself", if gunicorn is installed."""
    try:
        from gunicorn.workers.base_async import ALREADY_HANDLED
    except ImportError:
        return None
    return ALREADY_HANDLED
