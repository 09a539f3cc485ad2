"""The TLS profile against nginx with Mozilla's intermediate configuration (app.server.certificates,
app.server.tls): session resumption without tickets, DHE for RSA certificates, the client's
cipher order, HSTS on the server's own errors, the ALPN alert. Real handshakes over loopback,
with Python's ssl module and with ``openssl s_client``."""
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from tests.backends import TestBackend
from tests.certs import client_context, make_certificate, served_names, tls_connect
from tests.conftest import base_config
from tests.servers import SERVERS, serving
from tests.server.test_tls import https_get, tls_section
from tests.rawclient import read_response

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def backend():
    started = TestBackend("profile").start()
    yield started
    started.stop()


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, backend, tmp_path_factory):
    """One TLS proxy per server: an EC certificate (the default) and an RSA one, HSTS on."""
    folder = tmp_path_factory.mktemp("profile-certs")
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section(make_certificate(folder, "ec", ["ec.test"]),
                                         make_certificate(folder, "rsa", ["rsa.test"], key_type="rsa"),
                                         hsts="1h"))
    with serving(request.param, tmp_path_factory, config) as process:
        yield process


def _tls12(**options) -> ssl.SSLContext:
    return client_context(maximum_version=ssl.TLSVersion.TLSv1_2, **options)


def _close_without_close_notify(sock: ssl.SSLSocket) -> None:
    """End the TCP stream without a close_notify (as many clients do), wait until the server
    has closed its side (it has then seen the end), and close."""
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    raw.shutdown(socket.SHUT_WR)          # a FIN, and no TLS alert before it
    raw.close()
    sock.settimeout(10)
    try:
        while sock.recv(4096):
            pass
    except (ssl.SSLError, OSError):
        pass
    sock.close()


def test_tls_1_2_gets_no_session_ticket_and_resumes_from_the_session_cache(proxy):
    context = _tls12()
    with tls_connect(proxy.port, "ec.test", context=context) as first:
        assert https_get(proxy.port, "/t12", "ec.test", sock=first)[0] == 200
        session = first.session
        _close_without_close_notify(first)
    assert not session.has_ticket          # ssl_session_tickets off
    with tls_connect(proxy.port, "ec.test", context=context, session=session) as second:
        assert second.session_reused


def test_tls_1_2_session_id_resumes_after_a_close_without_close_notify(proxy):
    context = _tls12(options=ssl.OP_ALL | ssl.OP_NO_TICKET)   # a client that asks for none
    with tls_connect(proxy.port, "ec.test", context=context) as first:
        assert https_get(proxy.port, "/eof", "ec.test", sock=first)[0] == 200
        session = first.session
        _close_without_close_notify(first)
    with tls_connect(proxy.port, "ec.test", context=context, session=session) as second:
        assert second.session_reused
        assert https_get(proxy.port, "/eof-resumed", "ec.test", sock=second)[0] == 200


def test_tls_1_3_resumption_stays(proxy):
    context = client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    with tls_connect(proxy.port, "ec.test", context=context) as first:
        assert https_get(proxy.port, "/t13", "ec.test", sock=first)[0] == 200   # tickets come after
        session = first.session
        _close_without_close_notify(first)
    with tls_connect(proxy.port, "ec.test", context=context, session=session) as second:
        assert second.version() == "TLSv1.3"
        assert second.session_reused


def test_the_client_s_cipher_order_wins(proxy):
    for ciphers in ("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"):
        context = _tls12()
        context.set_ciphers(ciphers)
        with tls_connect(proxy.port, "ec.test", context=context) as sock:
            assert sock.cipher()[0] == ciphers.split(":")[0]   # ssl_prefer_server_ciphers off


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
@pytest.mark.parametrize("cipher", ["DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
                                    "DHE-RSA-CHACHA20-POLY1305"])
def test_a_client_with_only_dhe_gets_an_rsa_certificate_over_ffdhe2048(proxy, cipher):
    """IE 11 on Windows 7 and 8.1: DHE is all it has with an RSA certificate."""
    done = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{proxy.port}",
                           "-servername", "rsa.test", "-tls1_2", "-cipher", cipher],
                          input=b"", capture_output=True, timeout=20)
    out = done.stdout.decode()
    assert f"Cipher is {cipher}" in out, out + done.stderr.decode()
    assert "Server Temp Key: DH, 2048 bits" in out
    context = _tls12()
    context.set_ciphers(cipher)                 # the same through Python's ssl
    with tls_connect(proxy.port, "rsa.test", context=context) as sock:
        assert (sock.cipher()[0], served_names(sock)) == (cipher, ["rsa.test"])


def test_a_client_offering_only_h2_gets_the_no_application_protocol_alert(proxy):
    context = client_context()
    context.set_alpn_protocols(["h2"])
    with pytest.raises(ssl.SSLError) as raised:
        tls_connect(proxy.port, "ec.test", context=context).close()
    assert "tlsv1 alert no application protocol" in str(raised.value)   # not "no ALPN": an alert
    body = https_get(proxy.port, "/_myproxy/metrics", "ec.test")[2]
    assert b'myproxy_tls_handshake_failures_total{reason="alpn"} 1.0' in body


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
def test_openssl_s_client_offering_only_h2_is_told_no_application_protocol(proxy):
    done = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{proxy.port}",
                           "-servername", "ec.test", "-alpn", "h2"],
                          input=b"", capture_output=True, timeout=20)
    assert b"alert no application protocol" in done.stdout + done.stderr, done.stdout + done.stderr
    done = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{proxy.port}",
                           "-servername", "ec.test", "-alpn", "h2,http/1.1"],
                          input=b"", capture_output=True, timeout=20)
    assert b"ALPN protocol: http/1.1" in done.stdout, done.stdout


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET / HTTP/1.1\r\nHost: ec.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: ec.test\r\n\r\n", 414),
], ids=["400", "414"])
def test_the_server_s_own_errors_carry_hsts(proxy, request_bytes, status):
    if proxy.kind == "gunicorn-gevent":
        pytest.skip("the stock worker's parser answers these itself (README: the stock gevent worker)")
    with tls_connect(proxy.port, "ec.test") as sock:
        sock.sendall(request_bytes)
        got, headers, _ = read_response(sock)
    assert got == status
    assert headers["strict-transport-security"] == "max-age=3600"
