"""TLS termination on the listener: certificates, SNI, live reload, and a bounded handshake.

Owns what ``tls:`` in the config turns into:

- ``load_certificates``: each ``{cert, key}`` read and checked (readable, PEM, key matching
  the certificate, not expired), its names (SAN DNS names, wildcards included; the
  subject's CN only when there are none), issuer and not-after read with ``cryptography``,
  and one ``ssl.SSLContext`` made for it. Every problem is a ``ConfigError`` naming the
  file, the key path and the line, so it reads as any other config error;
- ``CertificateSet``: the names, and which certificate serves a server name (an exact
  name, then a wildcard covering one label, then the default: the first certificate);
- ``Terminator``: the listener's TLS side. Both servers call its ``wrap_socket`` on every
  accepted socket, in that connection's greenlet (gevent's ``StreamServer`` does for
  ``python wsgi.py``, and for gunicorn's gevent worker through the ``ssl_context`` server
  hook in ``gunicorn.conf.py``). ``accept`` first peeks: a client speaking plain HTTP gets
  ``400`` and is closed; then the handshake runs with ``do_handshake_on_connect=False``
  and an explicit ``do_handshake`` under ``timeouts.client_header``, so a slow handshake
  (slowloris over TLS) costs what a slow request head does. SNI looks up the certificate
  set in force at that moment: ``install`` swaps it (SIGHUP), new connections get the new
  certificates at once, open ones keep theirs.

The profile is Mozilla's "intermediate" (https://wiki.mozilla.org/Security/Server_Side_TLS,
version 5.7): TLS 1.2 and 1.3 only, the ciphers below for 1.2 (OpenSSL's TLS 1.3 suites
are that profile's), no compression, no renegotiation, ALPN ``http/1.1``.

Nothing here runs at import time, and no class derives from ``ssl.SSLContext``: this
module may be imported by gunicorn's master before gevent patches ``ssl`` in the worker,
so contexts are made at call time from whatever ``ssl.SSLContext`` is then.
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable

import gevent
from greenlet import GreenletExit

from ..config import CertificateFiles, ConfigError, ConfigHolder, TLSConfig

log = logging.getLogger("myproxy.tls")

# Mozilla "intermediate", TLS 1.2 ciphers (OpenSSL names), in their order. The DHE suites
# are listed by the profile but need DH parameters, which Python's ssl module loads only
# from a file: without one, clients get the ECDHE suites (every browser since 2013).
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))
ALPN_PROTOCOLS = ("http/1.1",)            # RFC 7301; HTTP/2 is not served
MIN_VERSIONS = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}
EXPIRY_WARNING_DAYS = 14                   # --check warns below this
# RFC 8446 §5.1: a TLS record starts with its content type; a ClientHello is handshake (22).
TLS_HANDSHAKE_RECORD = 0x16
PLAIN_HTTP_BODY = b"400 Bad Request: the plain HTTP request was sent to the HTTPS port\n"
PLAIN_HTTP_RESPONSE = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
                       % (len(PLAIN_HTTP_BODY), PLAIN_HTTP_BODY))
LINGER_SECONDS = 1.0                       # after the 400, read what the client still sends
LINGER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Certificate:
    """One loaded certificate: its files, what it says, and the context that serves it."""
    files: CertificateFiles
    names: tuple[str, ...]         # lower-case DNS names, "*.example.com" for a wildcard
    issuer: str
    not_after: float               # Unix time
    context: ssl.SSLContext

    def seconds_left(self, now: float) -> float:
        return self.not_after - now

    def describe(self, now: float) -> dict:
        """For /status and --check."""
        return {"cert": self.files.cert, "key": self.files.key, "names": list(self.names),
                "issuer": self.issuer, "not_after": round(self.not_after),
                "not_after_text": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.not_after)),
                "days_left": round(self.seconds_left(now) / 86400, 1)}


class CertificateSet:
    """Certificates by name: which one serves a server name. Never changed once made."""

    def __init__(self, certificates: tuple[Certificate, ...]):
        self.certificates = certificates
        self.default = certificates[0]
        self._exact: dict[str, Certificate] = {}
        self._wildcard: dict[str, Certificate] = {}     # "example.com" for "*.example.com"
        for certificate in certificates:              # the first to list a name serves it
            for name in certificate.names:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], certificate)
                else:
                    self._exact.setdefault(name, certificate)

    def choose(self, server_name: str | None) -> Certificate:
        """The certificate for ``server_name`` (SNI): an exact name first, then a wildcard
        covering its first label only (RFC 6125 §6.4.3), else the default."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is None:
            _, dot, parent = name.partition(".")
            found = self._wildcard.get(parent) if dot else None
        return found or self.default

    def expiry(self) -> dict[str, float]:
        """Each name's not-after (Unix time), for the metric; the first certificate wins."""
        expiry: dict[str, float] = {}
        for certificate in self.certificates:
            for name in certificate.names:
                expiry.setdefault(name, certificate.not_after)
        return expiry


def make_context(min_version: str = "1.2") -> ssl.SSLContext:
    """A server context with the intermediate profile and no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = getattr(ssl.TLSVersion, MIN_VERSIONS[min_version])
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return context


def load_certificates(tls: TLSConfig, source: str = "", now: float | None = None) -> CertificateSet:
    """Read and check every certificate of ``tls``; raises ``ConfigError`` naming the file."""
    now = time.time() if now is None else now
    return CertificateSet(tuple(_load_one(files, tls.min_version, source, now)
                                for files in tls.certificates))


def _load_one(files: CertificateFiles, min_version: str, source: str, now: float) -> Certificate:
    from cryptography import x509

    def error(which: str, message: str) -> ConfigError:
        path = files.cert if which == "cert" else files.key
        return ConfigError(f"{path}: {message}", source, f"tls.certificates[{files.index}].{which}",
                           files.cert_line if which == "cert" else files.key_line)

    pems = {}
    for which, path in (("cert", files.cert), ("key", files.key)):
        try:
            with open(path, "rb") as handle:
                pems[which] = handle.read()
        except OSError as problem:
            raise error(which, f"cannot read the file: {problem.strerror or problem}") from None
    try:
        chain = x509.load_pem_x509_certificates(pems["cert"])
    except ValueError:
        raise error("cert", "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)") from None
    leaf = chain[0]
    not_after = leaf.not_valid_after_utc.timestamp()
    if not_after <= now:
        raise error("cert", "the certificate has expired (not after "
                    f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)")
    context = make_context(min_version)
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as problem:
        if "KEY_VALUES_MISMATCH" in str(problem) or "key values mismatch" in str(problem):
            raise error("key", f"the key does not match the certificate {files.cert}") from None
        raise error("key", f"not a usable PEM private key ({problem.reason or problem})") from None
    except OSError as problem:
        raise error("key", f"cannot read the file: {problem.strerror or problem}") from None
    return Certificate(files, _names(leaf), _issuer(leaf), not_after, context)


def _names(leaf) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:     # an old certificate: its subject's common name (RFC 6125 §6.4.4)
        names = [attr.value.lower() for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(names))


def _issuer(leaf) -> str:
    from cryptography.x509.oid import NameOID
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        found = leaf.issuer.get_attributes_for_oid(oid)
        if found:
            return str(found[0].value)
    return leaf.issuer.rfc4514_string()


class Refused(GreenletExit):
    """A connection that never got to HTTPS (plain HTTP, a failed or slow handshake): it is
    closed. A ``GreenletExit`` because the servers call ``wrap_socket`` in the connection's
    greenlet and have no way to hear "no socket": gevent ends the greenlet quietly."""


class Terminator:
    """The TLS side of the listener: the certificate set in force and the handshake.

    Usage: ``Terminator(settings)`` where ``settings.config.tls`` is set; pass it as
    ``ssl_context`` to a gevent ``StreamServer``/``WSGIServer`` (or return it from
    gunicorn's ``ssl_context`` hook): they call ``wrap_socket`` only. A worker of our own
    calls ``accept(sock)`` and gets the TLS socket or None.
    """

    def __init__(self, settings: ConfigHolder, clock: Callable[[], float] = time.time):
        tls = settings.config.tls
        self.settings = settings
        self.clock = clock
        self.certificates = load_certificates(tls, settings.config.source)
        # The listener's context: every connection starts on it; SNI moves it to its
        # certificate's. It keeps the session cache and ticket keys, so sessions resume
        # whichever certificate served them.
        self.context = make_context(tls.min_version)
        self.context.load_cert_chain(self.certificates.default.files.cert,
                                     self.certificates.default.files.key)
        self.context.sni_callback = self._on_server_name
        self.context.sslsocket_class = _closing_class(type(self.context).sslsocket_class)

    def prepare(self, tls: TLSConfig) -> CertificateSet:
        """Load the certificates of ``tls`` (a reload): raises ``ConfigError``, changes nothing."""
        return load_certificates(tls, self.settings.config.source)

    def install(self, certificates: CertificateSet, tls: TLSConfig) -> None:
        """From the next handshake on, serve ``certificates`` with ``tls.min_version``."""
        self.context.minimum_version = getattr(ssl.TLSVersion, MIN_VERSIONS[tls.min_version])
        self.certificates = certificates
        log.info("tls: %d certificate(s) in force: %s", len(certificates.certificates),
                 "; ".join(",".join(c.names) for c in certificates.certificates))

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
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            if not first:
                return _close(sock)
            if first[0] != TLS_HANDSHAKE_RECORD:
                if first.isalpha():          # a request line's method: plain HTTP
                    peer = _peer(sock)
                    _answer_plain_http(sock)
                    log.info("plain HTTP on the TLS port from %s: answered 400", peer)
                return _close(sock)
            wrapped = self.context.wrap_socket(sock, server_side=True,
                                               do_handshake_on_connect=False)
            wrapped.do_handshake()
            return wrapped
        except gevent.Timeout as timeout:
            if timeout is not timer:
                raise
            log.info("closing the connection of %s: no TLS handshake within %.1fs",
                     _peer(sock), limit)
        except (ssl.SSLError, OSError, ValueError) as problem:
            log.debug("TLS handshake with %s failed: %s", _peer(sock), problem)
        finally:
            timer.close()
        _close(wrapped if wrapped is not None else sock)
        return None

    def describe(self) -> list[dict]:
        """Each certificate in force, for /status."""
        now = self.clock()
        return [certificate.describe(now) for certificate in self.certificates.certificates]

    def expiry(self) -> dict[str, float]:
        return self.certificates.expiry()


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
    sslobj = getattr(sock, "_sslobj", None)
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
        sock.shutdown(socket.SHUT_WR)
        left = LINGER_BYTES
        with gevent.Timeout(LINGER_SECONDS, False):
            while left > 0:
                data = sock.recv(65536)
                if not data:
                    break
                left -= len(data)
    except OSError:
        pass


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


def check_files(config) -> CertificateSet | None:
    """Load the certificates of ``config`` once (start-up, ``--check``): raises ``ConfigError``."""
    if config.tls is None:
        return None
    return load_certificates(config.tls, config.source)

