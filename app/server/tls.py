"""TLS termination on the listener: the bounded handshake, SNI, live reload, a clean close.

``Terminator`` is the listener's TLS side. Both servers call its ``wrap_socket`` on every
accepted socket, in that connection's greenlet (gevent's ``StreamServer`` does for
``python wsgi.py``, and for gunicorn's gevent worker through the ``ssl_context`` server hook
in ``gunicorn.conf.py``). ``accept`` first peeks: a client speaking plain HTTP gets ``400``
and is closed; then the handshake runs with ``do_handshake_on_connect=False`` and an
explicit ``do_handshake`` under ``timeouts.client_header``, so a slow handshake (slowloris
over TLS) costs what a slow request head does. SNI looks up the certificate set in force at
that moment (``app.server.certificates``): ``install`` swaps it (SIGHUP), new connections
get the new certificates at once, open ones keep theirs. A TLS connection ends with
close_notify (``send_close_notify``). ``connection_tls`` tells the access log the version
and whether the session was resumed.

A certificate outside its validity is served (as nginx does) and said loudly: an ERROR
line at start and at every reload that keeps it, and ``Certificate.problem`` for /status,
the metrics and ``--check``. A ClientHello whose ALPN list has no protocol we serve gets
the fatal ``no_application_protocol`` alert (RFC 7301 §3.2; ``app.server.client_hello``),
which Python's ssl does not send. ``refusal_headers`` gives the connection's own error
answers (400, 414, 431) the ``Strict-Transport-Security`` every other HTTPS answer has.

No class here derives from ``ssl.SSLContext`` or ``SSLSocket`` at import time: gunicorn's
master imports this module before its workers patch ``ssl``.
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Callable

import gevent
from gevent import GreenletExit

from ..config import TLSConfig
from .certificates import (ALPN_PROTOCOLS, MIN_VERSIONS, CertificateSet, load_certificates,
                           make_context)
from .client_hello import MAX_RECORD, NO_APPLICATION_PROTOCOL_ALERT, offered_alpn
from ..wire.gevent_adapter import tls_object
from ..wire.gevent_adapter import linger

log = logging.getLogger("myproxy.tls")

# RFC 8446 §5.1: a TLS record starts with its content type; a ClientHello is handshake (22).
TLS_HANDSHAKE_RECORD = 0x16
PLAIN_HTTP_BODY = b"400 Bad Request: the plain HTTP request was sent to the HTTPS port\n"
PLAIN_HTTP_RESPONSE = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
                       % (len(PLAIN_HTTP_BODY), PLAIN_HTTP_BODY))
LINGER_SECONDS = 1.0                       # after the 400, read what the client still sends
# Why a connection never got to HTTPS: plain HTTP (answered 400), other bytes than a TLS
# record, no handshake within client_header, an ALPN list without http/1.1 (answered
# no_application_protocol), a handshake that failed (no common protocol version or
# cipher, a reset, a bad message).
REFUSALS = ("plain_http", "not_tls", "timeout", "alpn", "failed")
SERVED_ALPN = frozenset(name.encode() for name in ALPN_PROTOCOLS)
LINGER_BYTES = 64 * 1024


class Refused(GreenletExit):
    """A connection that never got to HTTPS (plain HTTP, a failed or slow handshake): it is
    closed. A ``GreenletExit`` because the servers call ``wrap_socket`` in the connection's
    greenlet and have no way to hear "no socket": gevent ends the greenlet quietly."""


class Terminator:
    """The TLS side of the listener: the certificate set in force and the handshake.

    Usage: ``Terminator(settings)`` where ``settings.config`` (the config in force, read at
    each use) has ``tls`` set; pass it as
    ``ssl_context`` to a gevent ``StreamServer``/``WSGIServer`` (or return it from
    gunicorn's ``ssl_context`` hook): they call ``wrap_socket`` only. A worker of our own
    calls ``accept(sock)`` and gets the TLS socket or None.
    """

    def __init__(self, settings, clock: Callable[[], float] = time.time,
                 on_refused: Callable[[str], None] | None = None):
        tls = settings.config.tls
        self.settings = settings
        self.clock = clock
        # Told why a connection never got to HTTPS (one of REFUSALS), for the metrics.
        self.on_refused = on_refused
        self.certificates = load_certificates(tls, settings.config.source)
        # The listener's context: every connection starts on it; SNI moves it to its
        # certificate's. It keeps the session cache and ticket keys, so sessions resume
        # whichever certificate served them.
        self.context = make_context(tls.min_version)
        self.context.load_cert_chain(self.certificates.default.files.cert,
                                     self.certificates.default.files.key)
        self.context.sni_callback = self._on_server_name
        self.context.sslsocket_class = _closing_class(type(self.context).sslsocket_class)
        report_problems(self.certificates, self.clock())

    def prepare(self, tls: TLSConfig) -> CertificateSet:
        """Load the certificates of ``tls`` (a reload): raises ``ConfigError``, changes nothing."""
        return load_certificates(tls, self.settings.config.source)

    def changes(self, certificates: CertificateSet) -> list[str]:
        """What serving ``certificates`` instead of those in force changes (for the reload's
        log line): each certificate added, renewed or removed, with its new expiry."""
        return [f"tls.certificates: {item}"
                for item in self.certificates.changes(certificates, self.clock())]

    def install(self, certificates: CertificateSet, tls: TLSConfig) -> None:
        """From the next handshake on, serve ``certificates`` with ``tls.min_version``."""
        self.context.minimum_version = getattr(ssl.TLSVersion, MIN_VERSIONS[tls.min_version])
        self.certificates = certificates
        log.info("tls: %d certificate(s) in force: %s", len(certificates.certificates),
                 "; ".join(",".join(c.names) for c in certificates.certificates))
        report_problems(certificates, self.clock())

    def refusal_headers(self, sock) -> list[tuple[str, str]]:
        """The header fields the server's own error answers (a malformed request head) carry
        on ``sock``: ``Strict-Transport-Security`` over TLS with ``tls.hsts`` set, as on
        every other HTTPS answer (nginx's ``add_header ... always``); none over plain HTTP
        (RFC 6797 §7.2)."""
        tls = self.settings.config.tls
        if tls is None or not tls.hsts or socket_tls(sock) is None:
            return []
        return [("Strict-Transport-Security", hsts_value(tls.hsts))]

    def _on_server_name(self, ssl_socket, server_name, _context) -> None:
        # Called by OpenSSL inside the handshake, for every ClientHello (server_name None
        # without SNI): the set in force now decides, the default included.
        ssl_socket.context = self.certificates.choose(server_name).context

    # --- accepting -------------------------------------------------------------------------

    def wrap_socket(self, sock, server_side: bool = True, **_ignored):
        """What gevent's servers call on each accepted socket (as on an ``SSLContext``):
        the TLS socket once its handshake is done; otherwise raises ``Refused``. A socket
        accepted on ``tls.redirect_from`` (gunicorn binds it beside ``port``, with the same
        context) stays plain."""
        redirect_from = self.settings.config.tls.redirect_from
        if redirect_from and _local_port(sock) == redirect_from:
            return sock       # gunicorn's second address: plain HTTP, answered with a redirect
        wrapped = self.accept(sock)
        if wrapped is None:
            raise Refused()
        return wrapped

    def accept(self, sock):
        """Make ``sock`` (just accepted) a TLS socket, within ``timeouts.client_header``.

        A client speaking plain HTTP is answered ``400`` and closed; a handshake that fails
        or is not done in time is closed. Returns the TLS socket, or None when closed.
        """
        limit = self.settings.config.timeouts.client_header
        timer = gevent.Timeout.start_new(limit)
        wrapped = None
        reason = None            # a connection closed before it sent a byte is no refusal
        try:
            # What has come (a whole ClientHello, as a rule), left in the socket for OpenSSL.
            first = sock.recv(MAX_RECORD, socket.MSG_PEEK)
            if first and first[0] != TLS_HANDSHAKE_RECORD:
                reason = "not_tls"
                if first[:1].isalpha():          # a request line's method: plain HTTP
                    reason = "plain_http"
                    peer = _peer(sock)
                    _answer_plain_http(sock)
                    log.info("plain HTTP on the TLS port from %s: answered 400", peer)
            elif first and _no_served_protocol(first):
                reason = "alpn"
                log.debug("TLS client %s offers no ALPN protocol we serve (%s): answered "
                          "no_application_protocol", _peer(sock),
                          ",".join(name.decode("latin-1") for name in offered_alpn(first)))
                _answer_no_protocol(sock, len(first))
            elif first:
                wrapped = self.context.wrap_socket(sock, server_side=True,
                                                   do_handshake_on_connect=False)
                wrapped.do_handshake()
                return wrapped
        except gevent.Timeout as timeout:
            if timeout is not timer:
                raise
            reason = "timeout"
            # Once wrapped, ``sock`` is detached: the TLS socket knows the address.
            log.info("closing the connection of %s: no TLS handshake within %.1fs",
                     _peer(wrapped if wrapped is not None else sock), limit)
        except (ssl.SSLError, OSError, ValueError) as problem:
            reason = "failed"
            log.debug("TLS handshake with %s failed: %s",
                      _peer(wrapped if wrapped is not None else sock), problem)
        finally:
            timer.close()
        _close(wrapped if wrapped is not None else sock)
        if reason is not None and self.on_refused is not None:
            self.on_refused(reason)
        return None

    def describe(self) -> list[dict]:
        """Each certificate in force, for /status."""
        now = self.clock()
        return [certificate.describe(now) for certificate in self.certificates.certificates]

    def expiry(self) -> dict[str, tuple[float, float]]:
        return self.certificates.expiry()


def report_problems(certificates: CertificateSet, now: float) -> None:
    """An ERROR line for each certificate clients refuse (expired, not yet valid)."""
    for certificate, problem in certificates.problems(now):
        log.error("tls: certificate[%d] %s (%s) %s: clients refuse it; it is served until "
                  "the file is replaced and the config reloaded", certificate.files.index,
                  certificate.files.cert, ",".join(certificate.names), problem)


def hsts_value(max_age: float) -> str:
    """The ``Strict-Transport-Security`` field value for ``tls.hsts`` (RFC 6797 §6.1)."""
    return f"max-age={int(max_age)}"


def connection_tls(environ: dict) -> tuple[str, bool] | None:
    """The TLS version and whether the session was resumed, for a request over TLS."""
    found = environ.get("myproxy.tls")        # python wsgi.py's handler, once a connection
    if found is not None:
        return found
    return socket_tls(environ.get("gunicorn.socket"))


def socket_tls(sock) -> tuple[str, bool] | None:
    """``connection_tls`` for a socket: None if it is not a TLS socket."""
    version = getattr(sock, "version", None)
    if version is None:
        return None
    try:
        name = version()
        return (name, bool(sock.session_reused)) if name else None
    except (OSError, ValueError, AttributeError):
        return None


def send_close_notify(sock) -> None:
    """Tell the client the TLS connection ends (RFC 8446 §6.1 close_notify), without
    waiting for its own: a client that sees the TCP connection end without one must take
    it as a truncation attack (wrk counts a read error for each), and nginx sends one too.
    Never blocks: the descriptor under a gevent socket is non-blocking, and OpenSSL's wait
    for the peer's close_notify ends in a "want read" that is ignored here."""
    sslobj = tls_object(sock)
    if sslobj is None:
        return
    try:
        sslobj.shutdown()
    except (OSError, ValueError):
        pass


def _closing_class(base: type) -> type:
    """``base`` (the ``SSLSocket`` class of the ``ssl`` module in force: gevent's, once
    patched, which is why it is made at run time) whose ``close`` sends close_notify
    first. gunicorn closes client sockets with ``close``."""
    class ClosingTLSSocket(base):
        def close(self):
            send_close_notify(self)
            super().close()

    return ClosingTLSSocket


def _answer_plain_http(sock) -> None:
    """nginx's answer to plain HTTP on a TLS port, then a short lingering read so that the
    client reads it instead of a reset."""
    try:
        sock.sendall(PLAIN_HTTP_RESPONSE)
    except OSError:
        return
    linger(sock, LINGER_SECONDS, LINGER_BYTES)


def _no_served_protocol(client_hello: bytes) -> bool:
    """Whether the ClientHello offers ALPN protocols and none that we serve."""
    if any(bytes((len(name),)) + name in client_hello for name in SERVED_ALPN):
        return False        # the common case, without parsing (17 µs saved per connection)
    offered = offered_alpn(client_hello)
    return bool(offered) and SERVED_ALPN.isdisjoint(offered)


def _answer_no_protocol(sock, hello_bytes: int) -> None:
    """The fatal alert, once the ClientHello is read (closing on unread bytes would send a
    reset, which may reach the client before the alert), then a short lingering read."""
    sock.recv(hello_bytes)
    sock.sendall(NO_APPLICATION_PROTOCOL_ALERT)
    linger(sock, LINGER_SECONDS, LINGER_BYTES)


def _peer(sock) -> str:
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError):
        return "?"


def _local_port(sock) -> int | None:
    try:
        return sock.getsockname()[1]
    except (OSError, IndexError):
        return None


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass
    return None
