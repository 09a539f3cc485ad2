"""``Upstream``: what the upstream client does beyond one exchange (see test_exchange.py)."""
import socket
import ssl

import gevent
import pytest

from app.errors import UpstreamError
from app.proxy.upstream import Upstream
from tests.proxy.test_tunnel_inprocess import certificate  # noqa: F401 - fixture


def test_a_member_found_through_dns_is_verified_for_its_name_not_its_address(certificate):  # noqa: F811
    # A TLS server on 127.0.0.2 that records the name the client asks for (SNI).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    asked = []
    context.sni_callback = lambda sock, name, ctx: asked.append(name)
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen()

    def serve():
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass                     # the client refuses our self-signed certificate
        finally:
            conn.close()
    server = gevent.spawn(serve)
    origin = f"https://127.0.0.2:{listener.getsockname()[1]}"
    upstream = Upstream()
    upstream.name_origin(origin, "a.api.test")
    try:
        with pytest.raises(UpstreamError):
            upstream.send(origin, "GET", "/", [("Host", "a.api.test")])
        server.join(timeout=5)
    finally:
        listener.close()
    assert asked == ["a.api.test"]
    assert upstream.pool(origin).assert_hostname == "a.api.test"
