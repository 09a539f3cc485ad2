"""``app.wire.gevent_adapter``: each gevent internal it reaches, pinned by name on real
sockets, so that a gevent bump that changes one fails here first."""
import socket
import ssl
import time

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import Event
from gevent.exceptions import ConcurrentObjectUseError
from gevent.monkey import get_original

from app.wire.gevent_adapter import (read_event, std_socket, tls_object, wait_with_timeout,
                                     wait_without_timeout)
from tests.backends import wait_until
from tests.certs import make_certificate


def fired(watcher, timeout: float = 5.0) -> bool:
    """Whether ``watcher`` fires within ``timeout``; stopped again either way."""
    event = Event()
    watcher.start(event.set)
    try:
        return event.wait(timeout)
    finally:
        watcher.stop()


def test_read_event_is_a_watcher_on_the_sockets_descriptor_that_fires_when_bytes_arrive(pair):
    a, b = pair
    watcher = read_event(a)
    assert watcher is read_event(a)          # the socket's own, made once with it
    assert watcher.fd == a.fileno()
    assert not fired(watcher, timeout=0.05)  # nothing to read: it does not fire
    b.sendall(b"x")
    assert fired(watcher)


def test_read_event_fires_on_the_peers_end_of_file(pair):
    a, b = pair
    b.shutdown(socket.SHUT_WR)
    assert fired(read_event(a))


def test_read_event_is_none_for_a_socket_that_is_not_gevents():
    plain = get_original("socket", "socket")()
    try:
        assert read_event(plain) is None
    finally:
        plain.close()


def test_wait_with_timeout_returns_when_bytes_arrive(pair):
    a, b = pair
    a.settimeout(5.0)
    gevent.spawn_later(0.01, b.sendall, b"x")
    wait_with_timeout(a, read_event(a))
    assert a.recv(1) == b"x"


def test_wait_with_timeout_raises_socket_timeout_after_the_sockets_timeout(pair):
    a, _ = pair
    a.settimeout(0.05)
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        wait_with_timeout(a, read_event(a))
    assert 0.04 <= time.monotonic() - started < 2.0


def test_wait_with_timeout_refuses_a_second_waiter_and_marks_the_watcher_meanwhile(pair):
    a, b = pair
    a.settimeout(5.0)
    watcher = read_event(a)
    assert watcher.callback is None          # what wait_readable checks
    first = gevent.spawn(wait_with_timeout, a, watcher)
    assert wait_until(lambda: watcher.callback is not None, timeout=5)
    with pytest.raises(ConcurrentObjectUseError):
        wait_with_timeout(a, watcher)
    b.sendall(b"x")
    first.get(timeout=5)
    assert watcher.callback is None


def test_wait_without_timeout_returns_when_bytes_arrive_whatever_the_sockets_timeout(pair):
    a, b = pair
    a.settimeout(0.01)                       # gevent's timer would fire: this wait has none
    gevent.spawn_later(0.1, b.sendall, b"x")
    with gevent.Timeout(5):
        wait_without_timeout(a, read_event(a))
    assert a.recv(1) == b"x"


def test_std_socket_is_the_standard_librarys_socket_on_the_same_descriptor(pair):
    a, b = pair
    raw = std_socket(a)
    assert raw is not a and not isinstance(raw, gsocket.socket)
    assert raw.fileno() == a.fileno()
    assert std_socket(raw) is raw


def test_std_socket_never_waits_a_peek_from_the_hub_says_would_block(pair):
    """What the client watch does from the hub: a read that must not switch greenlets."""
    a, b = pair
    raw = std_socket(a)
    flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
    results = []
    done = Event()

    def in_the_hub():
        try:
            raw.recv(1, flags)
        except BlockingIOError as error:
            results.append(error)
        b.sendall(b"y")
        done.set()

    gevent.get_hub().loop.run_callback(in_the_hub)
    assert done.wait(5)
    assert isinstance(results[0], BlockingIOError)
    assert fired(read_event(a))
    assert raw.recv(1, flags) == b"y"        # a peek: the byte stays
    assert a.recv(1) == b"y"


@pytest.fixture
def tls_pair(tmp_path):
    """A TLS connection over a real loopback TCP connection: (server side, client side)."""
    cert, key = make_certificate(tmp_path, "server", ["localhost"])
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client_tcp = gsocket.create_connection(listener.getsockname(), timeout=5)
    server_tcp, _ = listener.accept()
    listener.close()
    # A ragged end of file (no close_notify) raises on the client instead of reading b"".
    handshake = gevent.spawn(client_context.wrap_socket, client_tcp, server_hostname="localhost",
                             suppress_ragged_eofs=False)
    server = server_context.wrap_socket(server_tcp, server_side=True)
    client = handshake.get(timeout=5)
    yield server, client
    server.close()
    client.close()


def test_tls_object_shutdown_sends_close_notify_without_waiting_for_the_peers(tls_pair):
    server, client = tls_pair
    client.settimeout(5)
    server.sendall(b"last")
    tls = tls_object(server)
    assert tls is not None
    started = time.monotonic()
    try:
        tls.shutdown()
    except ssl.SSLWantReadError:
        pass                                 # the peer's close_notify is not in: no wait
    assert time.monotonic() - started < 1.0
    assert client.recv(16) == b"last"
    assert client.recv(16) == b""            # a close_notify: a clean end, no ragged EOF


def test_tls_object_is_none_for_a_plain_socket(pair):
    a, _ = pair
    assert tls_object(a) is None
