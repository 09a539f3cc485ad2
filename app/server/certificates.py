"""TLS certificates: the files of ``tls.certificates`` read, checked and made servable.

- ``load_certificates``: each ``{cert, key}`` read and checked (readable, PEM, key matching
  the certificate), its names (SAN DNS names, wildcards included; the subject's CN only
  when there are none), issuer, validity and fingerprint read with ``cryptography``, and
  one ``ssl.SSLContext`` made for it (``make_context``: the profile below). Every problem
  with the files is a ``ConfigError`` naming the file, the key path and the line, so it
  reads as any other config error. A certificate outside its validity (expired, not yet
  valid) is no error: it is served, as nginx does, and ``Certificate.problem`` says what
  is wrong with it for the log, the metrics, /status and ``--check``;
- ``CertificateSet``: the names, and which certificate serves a server name (an exact
  name, then a wildcard covering one label, then the default: the first certificate);
  ``changes`` says which certificates a reload replaced.

The profile is Mozilla's "intermediate" (https://wiki.mozilla.org/Security/Server_Side_TLS,
version 5.7) as its nginx configuration sets it: TLS 1.2 and 1.3 only, the ciphers below
for 1.2 (OpenSSL's TLS 1.3 suites are that profile's) with the client's order honoured
(``ssl_prefer_server_ciphers off``), DHE over the RFC 7919 ffdhe2048 group, no session
tickets (``ssl_session_tickets off``: resumption goes through the session cache, TLS 1.3's
too), a client's close without close_notify no error (so its session stays resumable, as
nginx does), no compression, no renegotiation, ALPN ``http/1.1``.

It knows nothing of sockets or serving (``app.server.tls`` does). Contexts are made at call
time from whatever ``ssl.SSLContext`` is then (gevent's, once patched): gunicorn's master
imports this module before its workers patch ``ssl``.
"""
from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass

from ..config import CertificateFiles, ConfigError, TLSConfig

# Mozilla "intermediate", TLS 1.2 ciphers (OpenSSL names), in their order. The DHE suites
# (IE 11 on Windows 7 and 8.1 with an RSA certificate has no other) use DH_PARAMS.
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))
ALPN_PROTOCOLS = ("http/1.1",)            # RFC 7301; HTTP/2 is not served
MIN_VERSIONS = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}
EXPIRY_WARNING_DAYS = 14                   # --check warns below this
# RFC 7919 ffdhe2048 (a public constant; Mozilla's profile ships the same group), written
# by ``openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048``. Python's ssl
# loads DH parameters only from a file.
DH_PARAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ffdhe2048.pem")
# What the profile changes in OpenSSL's options: no tickets (the session cache resumes, a
# SIGHUP leaves no key valid for the process's life), a client's close without close_notify
# taken as one (OpenSSL 3 otherwise fails the connection and drops its session from the
# cache), no compression (CRIME), no renegotiation.
PROFILE_OPTIONS = (ssl.OP_NO_TICKET | ssl.OP_IGNORE_UNEXPECTED_EOF | ssl.OP_NO_COMPRESSION
                   | ssl.OP_NO_RENEGOTIATION)


@dataclass(frozen=True)
class Certificate:
    """One loaded certificate: its files, what it says, and the context that serves it."""
    files: CertificateFiles
    names: tuple[str, ...]         # lower-case DNS names, "*.example.com" for a wildcard
    issuer: str
    not_after: float               # Unix time
    context: ssl.SSLContext
    not_before: float = 0.0        # Unix time
    fingerprint: str = ""          # SHA-256 of the leaf, hex: tells a renewed file from the same

    def seconds_left(self, now: float) -> float:
        return self.not_after - now

    def valid(self, now: float) -> bool:
        return self.not_before <= now < self.not_after

    def problem(self, now: float) -> str | None:
        """Why clients refuse this certificate at ``now`` (expired, not yet valid), or None."""
        if now >= self.not_after:
            return f"expired {_days(now - self.not_after)} ago (not after {_utc(self.not_after)})"
        if now < self.not_before:
            return f"not valid until {_utc(self.not_before)} (in {_days(self.not_before - now)})"
        return None

    def describe(self, now: float) -> dict:
        """For /status and --check."""
        return {"cert": self.files.cert, "key": self.files.key, "names": list(self.names),
                "issuer": self.issuer, "not_after": round(self.not_after),
                "not_after_text": _utc(self.not_after),
                "not_before": round(self.not_before), "not_before_text": _utc(self.not_before),
                "days_left": round(self.seconds_left(now) / 86400, 1),
                "valid": self.valid(now), "problem": self.problem(now)}

    def summary(self, now: float) -> str:
        """One line for the log: where, names, expiry."""
        return (f"certificate[{self.files.index}] {self.files.cert} "
                f"({','.join(self.names)}) not_after={_utc(self.not_after)} "
                f"days_left={round(self.seconds_left(now) / 86400, 1):g}")


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

    def expiry(self) -> dict[str, tuple[float, float]]:
        """Each name's not-before and not-after (Unix time), for the metrics; the first
        certificate listing a name wins."""
        return {name: (certificate.not_before, certificate.not_after)
                for name, certificate in self.by_name().items()}

    def by_name(self) -> dict[str, Certificate]:
        """Each name and the certificate that serves it (the first to list it)."""
        found: dict[str, Certificate] = {}
        for certificate in self.certificates:
            for name in certificate.names:
                found.setdefault(name, certificate)
        return found

    def problems(self, now: float) -> list[tuple[Certificate, str]]:
        """Each certificate clients refuse at ``now``, and why."""
        return [(c, c.problem(now)) for c in self.certificates if c.problem(now) is not None]

    def changes(self, new: "CertificateSet", now: float) -> list[str]:
        """What replacing this set with ``new`` changes, one item per certificate: a new
        file, a file gone, or other contents in the same file (a renewal), with the new
        names and expiry; empty when every file holds the same certificate."""
        old = {c.files.cert: c for c in self.certificates}
        items = []
        for certificate in new.certificates:
            before = old.pop(certificate.files.cert, None)
            if before is None:
                items.append(f"added {certificate.summary(now)}")
            elif before.fingerprint != certificate.fingerprint:
                items.append(f"renewed {certificate.summary(now)} (was not_after="
                             f"{_utc(before.not_after)})")
        items += [f"removed certificate {gone.files.cert} ({','.join(gone.names)})"
                  for gone in old.values()]
        return items


def make_context(min_version: str = "1.2") -> ssl.SSLContext:
    """A server context with the intermediate profile and no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = getattr(ssl.TLSVersion, MIN_VERSIONS[min_version])
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= PROFILE_OPTIONS
    # Python turns server preference on; the profile leaves the choice to the client
    # (every cipher listed is strong, and the client knows whether it has AES hardware).
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_dh_params(DH_PARAMS)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return context


def load_certificates(tls: TLSConfig, source: str = "") -> CertificateSet:
    """Read and check every certificate of ``tls``; raises ``ConfigError`` naming the file.
    An expired or not yet valid certificate loads (``Certificate.problem`` says so)."""
    return CertificateSet(tuple(_load_one(files, tls.min_version, source)
                                for files in tls.certificates))


def _load_one(files: CertificateFiles, min_version: str, source: str) -> Certificate:
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
    context = make_context(min_version)
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as problem:
        if "KEY_VALUES_MISMATCH" in str(problem) or "key values mismatch" in str(problem):
            raise error("key", f"the key does not match the certificate {files.cert}") from None
        raise error("key", f"not a usable PEM private key ({problem.reason or problem})") from None
    except OSError as problem:
        raise error("key", f"cannot read the file: {problem.strerror or problem}") from None
    from cryptography.hazmat.primitives import hashes
    return Certificate(files, _names(leaf), _issuer(leaf), leaf.not_valid_after_utc.timestamp(),
                       context, not_before=leaf.not_valid_before_utc.timestamp(),
                       fingerprint=leaf.fingerprint(hashes.SHA256()).hex())


def _utc(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


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

