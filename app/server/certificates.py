"""TLS certificates: the files of ``tls.certificates`` read, checked and made servable.

- ``load_certificates``: each ``{cert, key}`` read and checked (readable, PEM, key matching
  the certificate, not expired), its names (SAN DNS names, wildcards included; the
  subject's CN only when there are none), issuer and not-after read with ``cryptography``,
  and one ``ssl.SSLContext`` made for it (``make_context``: the profile below). Every
  problem is a ``ConfigError`` naming the file, the key path and the line, so it reads as
  any other config error;
- ``CertificateSet``: the names, and which certificate serves a server name (an exact
  name, then a wildcard covering one label, then the default: the first certificate).

The profile is Mozilla's "intermediate" (https://wiki.mozilla.org/Security/Server_Side_TLS,
version 5.7): TLS 1.2 and 1.3 only, the ciphers below for 1.2 (OpenSSL's TLS 1.3 suites
are that profile's), no compression, no renegotiation, ALPN ``http/1.1``.

It knows nothing of sockets or serving (``app.server.tls`` does). Contexts are made at call
time from whatever ``ssl.SSLContext`` is then (gevent's, once patched): gunicorn's master
imports this module before its workers patch ``ssl``.
"""
from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

from ..config import CertificateFiles, ConfigError, TLSConfig

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


def check_files(config) -> CertificateSet | None:
    """Load the certificates of ``config`` once (start-up, ``--check``): raises ``ConfigError``."""
    if config.tls is None:
        return None
    return load_certificates(config.tls, config.source)

