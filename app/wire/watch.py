"""Whether the client is still there while the proxy waits on a backend: client aborts.

A client that gives up (a slow query, a long poll, an SSE stream nobody reads) should not
hold a backend. ``ClientWatch`` watches the client socket, but only while the request's
greenlet waits for the backend (between ``waiting()`` and ``done_waiting()``): the response
head, or the next piece of the body. When the client is gone it throws ``ClientAborted``
into that greenlet, which abandons the backend request. Outside those waits nothing is
watched, so the server's own reads and writes are never disturbed.

What counts as gone: TCP cannot tell a client that closed its connection from one that
only shut down its sending side (``shutdown(SHUT_WR)``) after a complete request, which
HTTP/1.1 allows: both arrive as a FIN, an end of file. nginx and Go take that end of file
for an abort, and cut off the half-closing client. Here:

- a reset (``ECONNRESET``, or any other error on the socket) is an abort, at once;
- bytes waiting are a pipelined request: the client is there, and nothing more can be
  learnt without reading them, so the watch ends for this request;
- an end of file is not an abort by itself. While the response head is still to come
  (and the connection is plain TCP, HTTP/1.1), the proxy then sends the client an interim
  ``100 Continue`` (RFC 9110 §15.2: an HTTP/1.1 client must parse and skip a 1xx it did
  not ask for), as a probe: a client that closed its socket answers those bytes with a
  reset (RFC 9293 §3.10.7.4, new data after close), a half-closed one reads and skips
  them. Later (and mid-body, where nothing may be sent) the socket is checked again for
  that reset ``RECHECK_FIRST`` seconds after the end of file, then every
  ``RECHECK_EVERY``: after the next piece of the body goes out, a closed client resets.

The cost on a request whose client stays (nearly all): one watcher started and stopped
per wait, no system call. MyProxy's own server keeps one ``ClientWatch`` per connection,
on the connection's ``read_watcher`` (a new watcher costs a system call to make and
another when libev first polls it), and hands it to each request in ``CLIENT_WATCH``;
``close`` at the end of a request readies it for the next. Under gunicorn each request
makes its own (``watch_client``). It knows nothing of HTTP beyond the probe's bytes, nor
of backends.
"""
from __future__ import annotations

import socket
import ssl

import gevent.ssl
from gevent import get_hub, getcurrent

from .gevent_adapter import std_socket

CLIENT_WATCH = "myproxy.client_watch"       # the connection's ClientWatch (app.server.handler)
GUNICORN_SOCKET = "gunicorn.socket"         # set by gunicorn's workers
PROBE = b"HTTP/1.1 100 Continue\r\n\r\n"   # RFC 9110 §15.2.1; see the module docstring
RECHECK_FIRST = 0.02        # seconds after an end of file: a reset is in by then on a LAN
RECHECK_EVERY = 0.25        # then this often, until the request ends
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)   # made once: enum flags cost per use
_DONTWAIT = int(socket.MSG_DONTWAIT)
_READ = 1                                   # libev's EV_READ
# After an end of file a read reports no reset any more (Linux returns 0 first), so a
# reset is seen in the connection's TCP state (TCP_INFO's first byte; TCP_CLOSE once
# reset, where a half-closed connection stays in CLOSE_WAIT) or, elsewhere, SO_ERROR.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_CLOSE = 7                              # include/net/tcp_states.h
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# A client socket over TLS (not hasattr(sock, "do_handshake"): on a plain gevent socket that
# asks its __getattr__, which fails with an exception, on every request).
_TLS_SOCKETS = (ssl.SSLSocket, gevent.ssl.SSLSocket)


class ClientAborted(BaseException):
    """Thrown into a request's greenlet when its client has gone. A ``BaseException``
    (as ``gevent.Timeout`` is), so that no ``except Exception`` on the way to the backend
    takes it for a backend failure: it is never retried and never counts against a backend."""


def watch_client(environ: dict) -> "ClientWatch | None":
    """A watch made for this request on the server's client socket (gunicorn's), where its
    connection keeps none (``CLIENT_WATCH``); None where the server gives no socket."""
    sock = environ.get(GUNICORN_SOCKET)
    if sock is None:
        return None
    try:
        return ClientWatch(sock, probe=environ.get("SERVER_PROTOCOL") == "HTTP/1.1")
    except (OSError, ValueError):
        return None        # closed already


def read_watcher(sock):
    """A read watcher on ``sock``'s descriptor, for a ``ClientWatch`` kept for the
    connection. Whoever makes it closes it when the connection ends, before the
    descriptor is closed."""
    return get_hub().loop.io(sock.fileno(), _READ)


class ClientWatch:
    """Watches one client socket during a request's backend waits (module docstring)."""

    __slots__ = ("_sock", "_raw", "_fd", "_io", "_own", "_timer", "_waiter", "_can_probe",
                 "_probe", "_eof", "gone", "_over", "http11")

    def __init__(self, sock, probe: bool = True, io=None):
        """``probe``: the request is HTTP/1.1 (``http11``; a server that keeps the watch
        for its connection sets it for each request). ``io``: the connection's
        ``read_watcher``, lent (left stopped, not closed); without it the watch makes one
        of its own."""
        self._sock = sock
        self._raw = None                  # std_socket(sock), callable from the hub: when needed
        self._fd = sock.fileno()
        self._io = io
        self._own = io is None
        self._timer = None
        self._waiter = None         # the greenlet waiting on the backend, while it waits
        # No probe over TLS: bytes written past the TLS layer would break its records.
        self._can_probe = not isinstance(sock, _TLS_SOCKETS)
        self._probe = self._can_probe   # until this request's response head goes out
        self.http11 = probe         # the request is HTTP/1.1: it may be probed
        self._eof = False
        self.gone = False           # the client reset its connection
        self._over = False          # nothing more to watch for this request

    def waiting(self) -> None:
        """The current greenlet starts to wait for the backend. Raises ``ClientAborted``
        if the client is known to be gone."""
        if self.gone:
            raise ClientAborted()
        self._waiter = getcurrent()
        if self._over or self._eof:
            return                  # the recheck timer, if any, runs on its own
        io = self._io
        if io is None:
            io = self._io = get_hub().loop.io(self._fd, _READ)
        io.start(self._readable)

    def done_waiting(self, answered: bool = False) -> None:
        """The wait is over; ``answered``: the response head came, and goes to the client
        next, so no probe may be sent from now on."""
        self._waiter = None
        if answered:
            self._probe = False
        if self._io is not None:
            self._io.stop()

    def client_gone(self) -> bool:
        """Whether the client is gone now: for a response the server stopped writing part
        way (a write that failed because the client reset, or a timeout, or a shutdown:
        only the first is the client's leaving)."""
        return self.gone or self._reset()

    def close(self) -> None:
        """The request is over: stop watching, and be ready for the connection's next
        request. Safe to call twice."""
        self._waiter = None
        io = self._io
        if io is not None:
            if self._own:
                self._io = None
                io.close()
            else:
                io.stop()           # the connection's: the next request borrows it
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._over = self._eof = self.gone = False
        self._probe = self._can_probe

    # In the hub -------------------------------------------------------------------------

    def _readable(self) -> None:
        self._io.stop()             # level-triggered: it would fire again at once
        if self._raw is None:
            self._raw = std_socket(self._sock)
        try:
            data = self._raw.recv(1, _PEEK)
        except BlockingIOError:
            self._io.start(self._readable)     # nothing after all
            return
        except OSError:
            return self._abort()
        if data:
            self._over = True       # a pipelined request: the client is there
            return
        self._eof = True
        if self._probe and self.http11:
            self._probe = False
            try:
                self._raw.send(PROBE, _DONTWAIT)
            except OSError:
                return self._abort()
            if self._reset():       # on loopback the reset is in before send returns
                return self._abort()
        self._timer = get_hub().loop.timer(RECHECK_FIRST, RECHECK_EVERY)
        self._timer.start(self._recheck)

    def _recheck(self) -> None:
        if self._reset():
            self._abort()

    def _reset(self) -> bool:
        """Whether the connection has been reset (or closed on our side): the state, not a
        read, which reports nothing after an end of file."""
        raw = self._raw
        if raw is None:
            raw = self._raw = std_socket(self._sock)
        try:
            return bool(raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)) or (
                _TCP_INFO is not None and raw.family in _TCP_FAMILIES
                and raw.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0] == _TCP_CLOSE)
        except OSError:
            return True             # the socket is closed: the request is over anyway

    def _abort(self) -> None:
        waiter = self._waiter
        self.close()
        self.gone = self._over = True    # nothing more to watch: the client is gone
        if waiter is not None:
            # Straight from the hub, as gevent.Timeout does: the greenlet is blocked in a
            # wait on the backend right now, so that is where the exception lands.
            waiter.throw(ClientAborted())
