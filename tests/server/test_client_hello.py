"""app.server.client_hello: the ALPN names of a ClientHello, read from real ClientHellos that
Python's ssl writes into memory (no network), and from broken ones."""
import ssl

import pytest

from app.server.client_hello import NO_APPLICATION_PROTOCOL_ALERT, offered_alpn


def client_hello(alpn=None, server_name="example.test") -> bytes:
    """The first flight of a real TLS client: its ClientHello record(s)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("alpn,expected", [
    (None, None),
    (["h2"], (b"h2",)),
    (["h2", "http/1.1"], (b"h2", b"http/1.1")),
    (["http/1.1"], (b"http/1.1",)),
], ids=str)
def test_the_offered_names_in_order(alpn, expected):
    assert offered_alpn(client_hello(alpn)) == expected


@pytest.mark.parametrize("cut", [0, 1, 5, 9, 50, -1])
def test_a_partial_record_decides_nothing(cut):
    hello = client_hello(["h2"])
    assert offered_alpn(hello[:cut] if cut >= 0 else hello[:-1]) is None


def test_anything_but_a_client_hello_decides_nothing():
    assert offered_alpn(b"GET / HTTP/1.1\r\n\r\n") is None
    assert offered_alpn(NO_APPLICATION_PROTOCOL_ALERT) is None          # an alert record
    hello = bytearray(client_hello(["h2"]))
    hello[5] = 2                                                        # a ServerHello's type
    assert offered_alpn(bytes(hello)) is None


def test_the_alert_is_a_fatal_no_application_protocol():
    assert NO_APPLICATION_PROTOCOL_ALERT == bytes([21, 3, 3, 0, 2, 2, 120])   # RFC 7301 §3.2
