"""app.wire.watch on real loopback TCP connections: what counts as a client gone, and
what does not (a half-close, a pipelined request). The wire tests in
tests/proxy/test_client_abort.py cover the same through a running proxy."""
import socket
import struct

import gevent
import pytest

from app.wire.watch import PROBE, ClientAborted, ClientWatch
from tests.proxy.test_tunnel_inprocess import certificate  # noqa: F401 - fixture


@pytest.fixture
def pair():
    """(the proxy's side, the client's side) of one TCP connection on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield server, client
    server.close()
    client.close()


def wait_for_abort(watch: ClientWatch, seconds: float = 2.0) -> bool:
    """Wait as the proxy does for a backend; True if the watch threw ClientAborted."""
    watch.waiting()
    try:
        gevent.sleep(seconds)
    except ClientAborted:
        return True
    finally:
        watch.done_waiting()
    return False


def test_a_reset_is_an_abort(pair):
    server, client = pair
    watch = ClientWatch(server)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    assert wait_for_abort(watch) and watch.gone


def test_a_close_is_found_out_by_the_probe(pair):
    server, client = pair
    watch = ClientWatch(server)
    client.close()
    assert wait_for_abort(watch) and watch.gone


def test_a_half_close_is_not_an_abort_and_gets_the_probe(pair):
    server, client = pair
    watch = ClientWatch(server)
    client.shutdown(socket.SHUT_WR)
    assert not wait_for_abort(watch, 0.5) and not watch.gone
    client.settimeout(2)
    assert client.recv(100) == PROBE          # an interim 100 the client skips
    watch.close()


@pytest.mark.parametrize("why", ["response-begun", "http-1.0"])
def test_no_probe_once_the_response_has_begun_nor_to_an_http_1_0_request(pair, why):
    server, client = pair
    watch = ClientWatch(server)
    if why == "response-begun":
        watch.done_waiting(answered=True)    # the head came: the response has begun
    else:
        watch.http11 = False                 # as the server sets it, per request
    client.shutdown(socket.SHUT_WR)
    assert not wait_for_abort(watch, 0.3) and not watch.gone
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)
    watch.close()


@pytest.mark.parametrize("kind", ["stdlib", "gevent"])
def test_no_probe_goes_into_a_tls_connection(pair, certificate, kind):  # noqa: F811
    """Plain bytes written under TLS would break its records: a client over TLS that
    half-closes gets nothing from the watch."""
    import ssl

    import gevent.ssl
    server, client = pair
    module = ssl if kind == "stdlib" else gevent.ssl
    context = module.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(certificate[0])
    accepting = gevent.spawn(context.wrap_socket, server, server_side=True)
    secure = client_context.wrap_socket(client, server_hostname="127.0.0.1")
    tls_server = accepting.get(timeout=5)
    watch = ClientWatch(tls_server)
    secure.shutdown(socket.SHUT_WR)          # TCP's half-close, under TLS (no close_notify)
    assert not wait_for_abort(watch, 0.3) and not watch.gone
    secure.setblocking(False)
    came = b""                               # TLS is off this socket now: raw bytes
    try:
        while True:
            came += secure.recv(65536)       # (a session ticket, perhaps)
    except BlockingIOError:
        pass
    assert PROBE not in came
    watch.close()
    secure.close()
    tls_server.close()


def test_a_close_mid_body_is_an_abort_once_the_next_bytes_reach_it(pair):
    server, client = pair
    watch = ClientWatch(server)
    watch.done_waiting(answered=True)        # the head came: the response has begun
    client.close()
    assert not wait_for_abort(watch, 0.3)     # an end of file alone: perhaps a half-close
    server.sendall(b"the next piece of the body")      # a closed client resets
    assert wait_for_abort(watch) and watch.gone


def test_a_pipelined_request_ends_the_watch(pair):
    server, client = pair
    watch = ClientWatch(server)
    client.sendall(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
    assert not wait_for_abort(watch, 0.3) and not watch.gone
    client.close()                            # nothing more is watched for this request
    assert not wait_for_abort(watch, 0.3)
    watch.close()


def test_a_client_gone_is_known_after_a_failed_write(pair):
    server, client = pair
    watch = ClientWatch(server)
    assert not watch.client_gone()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with pytest.raises(OSError):
        for _ in range(100):
            server.send(b"x" * 65536)
            gevent.sleep(0.01)
    assert watch.client_gone()
    watch.close()


def test_close_readies_a_connections_watch_for_its_next_request(pair):
    """MyProxy's server keeps one watch per connection: after a request whose response
    began (no probe from then on) and a reset of the watch's state at close, the next
    request's wait is watched afresh, probe included."""
    server, client = pair
    watch = ClientWatch(server)
    watch.done_waiting(answered=True)        # the first request's head went out
    watch.close()                            # the first request is over
    client.shutdown(socket.SHUT_WR)
    assert not wait_for_abort(watch, 0.5) and not watch.gone
    client.settimeout(2)
    assert client.recv(100) == PROBE         # probed again: the second request's wait
    watch.close()
