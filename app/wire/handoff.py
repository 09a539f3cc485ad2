"""Taking the client connection over from the server, for a protocol upgrade.

A tunnel needs three things from whichever server runs the app: the client's socket, the
bytes the server already read past the request (a client may send the new protocol's
first bytes without waiting for the ``101``), and what the app returns so that the server
writes nothing more and reads no other request from the connection. The server says how
with a callable in ``environ[TAKE_CONNECTION]`` that returns a ``ClientConnection``:

- ``python wsgi.py`` (and MyProxy's gunicorn worker): ``app.server.handler.Handler``'s
  ``take_connection``, whose reader holds the read-ahead; the handler then writes nothing
  more and closes the connection once the app returns.
- ``gunicorn -k gevent``: ``app.server.gunicorn_worker.ServerConnection`` puts in
  ``app.server.gunicorn_adapter.take_connection`` (gunicorn's socket, its read-ahead, and
  its marker for "already handled").

Under anything else (webtest, other servers) ``can_take`` is false and an upgrade request
is proxied as an ordinary request, which RFC 9110 §7.8 allows. This module knows nothing
of servers, backends, or what flows through the tunnel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TAKE_CONNECTION = "myproxy.take_connection"   # set by the server: () -> ClientConnection


@dataclass
class ClientConnection:
    """The client's side of a tunnel once the server has let go of it."""

    socket: Any                        # for writing, and for shutdown when the tunnel ends
    read: Callable[[int], bytes]       # up to n bytes, read-ahead first; b"" at end of stream
    handled: Any                       # what the WSGI app returns so the server writes nothing


def can_take(environ: dict) -> bool:
    """Whether the server running this request can hand its connection over."""
    return TAKE_CONNECTION in environ


def take(environ: dict) -> ClientConnection:
    """Take the client connection from the server. Call once, after ``can_take``.

    The socket is made blocking with no timeout: from now on the tunnel decides when an
    idle connection is closed. The server closes the socket after the app returns.
    """
    client = environ[TAKE_CONNECTION]()
    client.socket.settimeout(None)
    return client
