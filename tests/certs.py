"""Certificates for the TLS tests, made with ``cryptography``: self-signed, EC P-256 (quick
to make) or RSA 2048 (for the DHE-RSA suites), any names (wildcards too), any validity
(expired, not yet valid); and TLS clients that show which one a server sent."""
from __future__ import annotations

import datetime
import os
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def make_certificate(folder, stem: str, names, days: float = 30, expired: bool = False,
                     issuer: str = "MyProxy Test CA", not_yet_valid: bool = False,
                     key_type: str = "ec") -> tuple[str, str]:
    """Write ``stem.pem`` and ``stem.key`` in ``folder``; return their paths. ``expired``:
    it ended a day ago; ``not_yet_valid``: it starts in two days."""
    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if key_type == "rsa"
           else ec.generate_private_key(ec.SECP256R1()))
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        not_before, not_after = now - datetime.timedelta(days=60), now - datetime.timedelta(days=1)
    elif not_yet_valid:
        not_before, not_after = now + datetime.timedelta(days=2), now + datetime.timedelta(days=days)
    else:
        not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    certificate = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, issuer)]))
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path = os.path.join(str(folder), f"{stem}.pem")
    key_path = os.path.join(str(folder), f"{stem}.key")
    with open(cert_path, "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path


def client_context(**options) -> ssl.SSLContext:
    """A client that accepts any certificate (the tests read which one came)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for name, value in options.items():
        setattr(context, name, value)
    return context


def tls_connect(port: int, server_name: str | None = None, timeout: float = 10.0,
                context: ssl.SSLContext | None = None, session=None) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return (context or client_context()).wrap_socket(sock, server_hostname=server_name,
                                                          session=session)
    except BaseException:
        sock.close()
        raise


def served_names(sock: ssl.SSLSocket) -> list[str]:
    """The DNS names of the certificate the server sent."""
    leaf = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    return leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
