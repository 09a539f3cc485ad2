"""Protocol upgrades (WebSocket and any other ``Upgrade``): the handshake and the tunnel.

``upgrade_requested`` tells an upgrade request from an ordinary one. ``Tunnels.send`` has
the contract of ``Upstream.send`` for an upgrade request: it opens a connection of its own
to the backend through the transport (plain TCP for ``http://``, TLS for ``https://``),
writes the request head as given (the raw target, each header line) with ``exchange``'s
codec, and returns the backend's answer (an ``exchange.Response``) unread. Any answer but
``101`` is an ordinary response the proxy relays as usual. After a ``101``,
``Tunnels.relay`` takes the client connection from the server (``app.handoff``), passes the
``101`` on, and copies bytes both ways, unchanged, until either side closes, no byte has
moved either way for ``timeouts.tunnel_idle``, or the server shuts down and kills it.

Each direction holds at most one ``READ_SIZE`` read at a time, so a fast sender waits for
a slow receiver instead of filling memory. This module knows nothing of how backends are
chosen, retried or counted: the proxy does that around ``send`` and ``relay``.
"""
from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from typing import Callable

import gevent

from . import exchange
from ..wire import handoff
from ..config import TimeoutsConfig
from ..request import KEY as REQUEST
from ..errors import BadRequest, ClientError
from ..wire.http1 import READ_SIZE, TCHAR, list_tokens, render_head
from .transport import Transport, classify

log = logging.getLogger("myproxy.tunnel")

SWITCHING_PROTOCOLS = 101             # RFC 9110 §15.2.2
HALF_CLOSE_GRACE = 1.0                # after one side closes, the other direction gets this
                                      # long to finish (a WebSocket close handshake's reply)

# RFC 9110 §7.8: Upgrade = #protocol; protocol = protocol-name ["/" protocol-version].
_PROTOCOL = re.compile(rf"{TCHAR}+(?:/{TCHAR}+)?")

# Protocol names (lower-cased) an upgrade is never tunnelled to: each would carry HTTP
# requests past the proxy, unmediated (no X-Forwarded-For replaced, no request ID, no
# access line, no limits, no choice of backend per request). ``h2c`` is HTTP/2 over
# cleartext, which RFC 9113 §3.1 deprecates (the h2c smuggling attack); ``h2`` may never
# appear in Upgrade (RFC 9113 §3.1, RFC 7540 §3.3); ``http`` (``HTTP/2.0`` and the like,
# RFC 9110 §7.8) is HTTP again; ``tls`` (RFC 2817) is HTTP inside TLS. A request naming
# any of them, alone or in a list, goes to the backend as an ordinary request, without
# Upgrade (what nginx does without an upgrade map). Other protocols (``websocket``, or
# anything that is not HTTP) are tunnelled: what flows in them is not HTTP requests.
NEVER_TUNNELLED = frozenset({"h2c", "h2", "http", "tls"})


def upgrade_requested(environ: dict) -> str:
    """The client's ``Upgrade`` value if this request asks to switch protocols, else "".

    A request asks when it is HTTP/1.1, carries ``Upgrade``, and names ``upgrade`` in
    ``Connection`` (RFC 9110 §7.8); otherwise ``Upgrade`` is an ordinary hop-by-hop header.
    A server that cannot hand its connection over (``app.handoff``), and an upgrade to a
    protocol of ``NEVER_TUNNELLED`` (h2c), make it an ordinary request too. Raises ``BadRequest`` (400) for a malformed ``Upgrade`` list or a
    header value that spans lines.
    """
    upgrade = environ.get("HTTP_UPGRADE")
    if upgrade is None:
        return ""
    if "upgrade" not in list_tokens(environ.get("HTTP_CONNECTION", "")) or \
            environ.get("SERVER_PROTOCOL") != "HTTP/1.1" or not handoff.can_take(environ):
        return ""
    protocols = [item.strip() for item in upgrade.split(",") if item.strip()]
    if not protocols or not all(_PROTOCOL.fullmatch(item) for item in protocols):
        raise BadRequest(f"malformed Upgrade header: {upgrade[:100]!r}")
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str) and ("\r" in value or "\n" in value):
            raise BadRequest(f"header {key[5:].replace('_', '-').title()} spans lines")
    if any(item.partition("/")[0].lower() in NEVER_TUNNELLED for item in protocols):
        return ""
    return ", ".join(protocols)


class Tunnels:
    """Upgrade handshakes with backends, and the tunnels that follow a ``101``.

    Each call names its timeouts (the request's pool's ``timeouts``). ``transport`` opens
    the connections (the proxy's, so a DNS member's certificate is verified for its name);
    without one, a ``Transport`` of its own verifies ``https://`` backends with
    ``ssl_context`` (default: the CA bundle requests ships); ``clock`` measures idleness.
    """

    def __init__(self, transport: Transport | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._transport = transport or Transport(ssl_context=ssl_context)
        self._clock = clock

    def send(self, origin: str, method: str, target: str, headers: list, body=None,
             chunked: bool = False, fresh: bool = True,
             timeouts: TimeoutsConfig = TimeoutsConfig()) -> exchange.Response:
        """Send an upgrade request on a new connection; return the answer, body unread.

        The contract of ``Upstream.send``; every connection is a fresh one, never pooled.
        ``headers`` already carry ``Connection: Upgrade`` and ``Upgrade``. Raises a subclass
        of ``UpstreamError`` (a connect or TLS failure means nothing was sent), or the
        ``ClientError`` reading the client's body raised.
        """
        conn = self._transport.open(origin, timeouts.connect)

        def release(keep: bool) -> None:
            conn.close()        # an answer but 101 ends its connection: never pooled

        try:
            exchange.send_request(conn.sock, method, target, headers, body, chunked,
                                  timeouts.read)
            return exchange.Response(conn.sock, method, release)
        except Exception as error:  # noqa: BLE001 - every failure becomes a typed error
            conn.close()
            if isinstance(error, ClientError):
                raise       # reading the client's body failed: the client's fault
            raise classify(error) from error
        except BaseException:
            conn.close()
            raise

    def relay(self, environ: dict, start_response: Callable, response: exchange.Response,
              backend: str, idle: float = TimeoutsConfig.tunnel_idle):
        """Pass the backend's 101 to the client, then relay bytes until the tunnel ends.

        Blocks for the tunnel's life and returns what the WSGI app must return so the
        server writes nothing more; ``idle`` is the pool's ``timeouts.tunnel_idle``. Leaves the bytes sent to the client in
        the request's ``Request.tunnel`` for the access log.
        """
        status = f"{SWITCHING_PROTOCOLS} {response.reason or 'Switching Protocols'}"
        added: list = []    # middleware adds its headers (X-Request-ID) to the 101 here
        try:
            client = handoff.take(environ)
            start_response(status, added)
        except BaseException:
            response.close()
            raise
        head = render_head(f"HTTP/1.1 {status}", [*response.header_lines, *added])
        tunnel = _Tunnel(client, response, self._clock)
        started = self._clock()
        closed_by = tunnel.run(head, idle)
        environ[REQUEST].tunnel = tunnel.sent["client"]
        log.info("tunnel closed: request_id=%s backend=%s closed_by=%s duration_s=%.1f "
                 "bytes_to_backend=%d bytes_to_client=%d", environ[REQUEST].id or "-",
                 backend, closed_by, self._clock() - started, tunnel.sent["backend"],
                 tunnel.sent["client"])
        return client.handled


class _Tunnel:
    """One upgraded connection: two pumps and the watch over them."""

    def __init__(self, client: handoff.ClientConnection, backend: exchange.Response, clock):
        self.client = client
        self.backend, self._early = backend.take_over()   # the socket, and bytes past the 101
        self._clock = clock
        self.last_active = clock()
        self.sent = {"client": 0, "backend": 0}

    def run(self, head: bytes, idle: float) -> str:
        """Relay until the tunnel ends; return who ended it: client, backend, idle, shutdown."""
        pumps = []
        try:
            self.backend.settimeout(None)     # idleness is watched here, not per read
            self.client.socket.sendall(head + self._early)
            self.sent["client"] += len(self._early)
            pumps = [gevent.spawn(self._pump, self.client.read, "client",
                                  self.backend, "backend"),
                     gevent.spawn(self._pump, self.backend.recv, "backend",
                                  self.client.socket, "client")]
            while True:
                wait = max(0.0, self.last_active + idle - self._clock()) if idle else None
                ended = gevent.wait(pumps, timeout=wait, count=1)
                if ended:
                    gevent.wait(pumps, timeout=HALF_CLOSE_GRACE)
                    return ended[0].value or "error"
                if self._clock() - self.last_active >= idle:
                    return "idle"
        except OSError:
            return "client"          # gone before the 101 reached it
        except gevent.GreenletExit:
            return "shutdown"        # the server's drain deadline passed
        finally:
            gevent.killall(pumps)
            self.close()

    def _pump(self, read, source: str, destination, name: str) -> str:
        """Copy ``source`` to ``destination`` until one fails; return the side that ended it."""
        while True:
            try:
                data = read(READ_SIZE)
            except (OSError, ValueError):
                return source
            if not data:
                if not isinstance(destination, ssl.SSLSocket):   # TLS has no half-close
                    _shutdown(destination, socket.SHUT_WR)       # the other peer sees the close
                return source
            self.last_active = self._clock()
            try:
                destination.sendall(data)
            except (OSError, ValueError):
                return name
            self.sent[name] += len(data)
            self.last_active = self._clock()

    def close(self) -> None:
        """End both connections. The server closes the client socket when the app returns."""
        _shutdown(self.client.socket, socket.SHUT_RDWR)
        _shutdown(self.backend, socket.SHUT_RDWR)
        try:
            self.backend.close()
        except OSError:
            pass


def _shutdown(sock, how: int) -> None:
    try:
        sock.shutdown(how)
    except (OSError, ValueError):
        pass
