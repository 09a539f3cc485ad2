"""``app.server.pywsgi_adapter``: each point of pywsgi it relies on, pinned on a real pywsgi
server and real sockets. A gevent bump that changes one fails here first."""
import socket

import pytest
from gevent.pywsgi import WSGIServer

from app.server.pywsgi_adapter import BaseHandler, format_date_time
from tests.rawclient import connect, read_all

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class Recording(BaseHandler):
    """Answers each request line with its own text; records what pywsgi gave it."""

    def handle_one_request(self):
        calls = self.server.calls
        if not calls:
            calls.append(("made", type(self.socket).__name__, self.client_address[0],
                          self.server is not None))
        if not self.rfile.peek(1):
            calls.append(("eof",))
            return None
        line = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        calls.append(("request", line))
        environ = self.server.get_environ()
        calls.append(("environ", environ["wsgi.url_scheme"], environ["SERVER_PORT"]))
        body = line.strip()
        self.socket.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True if not line.startswith(b"LAST") else None


@pytest.fixture
def served():
    servers = []

    def start():
        server = WSGIServer(("127.0.0.1", 0), lambda environ, start_response: [],
                            handler_class=Recording, log=None, error_log=None)
        server.calls = []
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=1)


def test_handle_calls_handle_one_request_until_none_then_closes_the_socket(served):
    server = served()
    with connect(server.server_port) as sock:
        sock.sendall(GET + b"LAST / HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        received = read_all(sock)          # the server closed after LAST
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert [call[1] for call in server.calls if call[0] == "request"] == \
        [b"GET / HTTP/1.1\r\n", b"LAST / HTTP/1.1\r\n"]


def get_then_close(port: int) -> bytes:
    """One GET on a new connection that then half-closes; every byte read back."""
    with connect(port) as sock:
        sock.sendall(GET)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def test_the_handler_gets_socket_address_server_and_a_buffered_rfile(served):
    server = served()
    get_then_close(server.server_port)
    assert server.calls[0] == ("made", "socket", "127.0.0.1", True)
    assert server.calls[-1] == ("eof",)      # rfile.peek gives b"" at the client's end


def test_get_environ_gives_the_servers_keys(served):
    server = served()
    assert get_then_close(server.server_port).startswith(b"HTTP/1.1 200 OK")
    assert ("environ", "http", str(server.server_port)) in server.calls
    assert server.ssl_enabled is False


def test_format_date_time_gives_the_date_value_as_bytes():
    assert format_date_time(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
