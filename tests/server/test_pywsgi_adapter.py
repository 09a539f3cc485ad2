"""``app.server.pywsgi_adapter``: each private name of pywsgi it reaches, pinned by name on
a real pywsgi server and real sockets: that pywsgi calls it, where we rely on it being
called, with what. A gevent bump that changes one fails here first."""
import socket

import pytest
from gevent.pywsgi import WSGIServer

from app.server.pywsgi_adapter import BaseHandler, Input
from tests.rawclient import connect, read_response


class Recording(BaseHandler):
    """``BaseHandler`` with its hooks recorded in the server's ``calls``."""

    def send(self, data):
        self.server.calls.append(("send", bytes(data)))
        super().send(data)

    def send_head(self, data):
        self.server.calls.append(("send_head", data, self.status))
        super().send_head(data)

    def client_input_error(self, ex):
        self.server.calls.append(("client_input_error", type(ex).__name__))
        return super().client_input_error(ex)

    def log_request(self):
        self.server.calls.append(("log", self.format_request()))


@pytest.fixture
def serve():
    """Serve a WSGI app on pywsgi with ``handler`` on port 0; its ``calls`` recorded."""
    servers = []

    def start(app, handler=Recording):
        server = WSGIServer(("127.0.0.1", 0), app, handler_class=handler, log=None,
                            error_log=None)
        server.calls = []
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=1)


def exchange(port: int, raw: bytes) -> tuple[bytes, list]:
    """Send ``raw`` on a new connection that then half-closes; return every byte read."""
    with connect(port) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
    return received


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def streamed(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"abc"
    yield b"defg"


def test_sendall_carries_every_byte_of_a_response_head_chunks_and_final_chunk(serve):
    server = serve(streamed)
    received = exchange(server.server_port, GET)
    sent = b"".join(call[1] for call in server.calls if call[0] == "send")
    assert received == sent
    assert received.endswith(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")     # _write's framing too


def test_write_with_headers_is_called_once_with_the_first_piece_after_start_response(serve):
    server = serve(streamed)
    exchange(server.server_port, GET + GET)
    heads = [call for call in server.calls if call[0] == "send_head"]
    assert heads == [("send_head", b"abc", b"200 OK")] * 2   # one per response, status set


def test_write_with_headers_gets_an_empty_piece_for_an_empty_body(serve):
    def empty(environ, start_response):
        start_response("204 No Content", [])
        return []

    server = serve(empty)
    exchange(server.server_port, GET)
    assert [call for call in server.calls if call[0] == "send_head"] == \
        [("send_head", b"", b"204 No Content")]


def test_write_is_send_body_it_frames_a_chunk_on_a_chunked_response(serve):
    class HeadAlone(Recording):
        def send_head(self, data):          # as standalone.Handler does for a large piece
            self.headers_sent = True
            self.finalize_headers()
            lines = b"".join(b"%s: %s\r\n" % pair for pair in self.response_headers)
            self.send(b"HTTP/1.1 %s\r\n%s\r\n" % (self.status, lines))
            self.send_body(data)

    server = serve(streamed, HeadAlone)
    received = exchange(server.server_port, GET)
    assert b"\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n" in received
    assert ("send", b"3\r\nabc\r\n") in server.calls


def test_handle_client_error_is_called_for_a_body_pywsgi_finds_invalid_and_400_follows(serve):
    def reads_body(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", "0")])
        return []

    server = serve(reads_body)
    received = exchange(server.server_port, b"POST / HTTP/1.1\r\nHost: t\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert ("client_input_error", "_InvalidClientInput") in server.calls
    assert received.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("pieces,expected", [
    ([], b"HTTP/1.1 500 Internal Server Error\r\n"),
    ([b"part"], b"HTTP/1.1 200 OK\r\n"),
], ids=["nothing-sent-yet-an-error-page", "part-sent-the-connection-closes"])
def test_send_error_response_if_possible_answers_500_only_before_the_response_starts(
        serve, pieces, expected):
    class Pages(Recording):
        def handle_error(self, t, v, tb):   # as standalone.Handler: our log, pywsgi's page
            self.server.calls.append(("error", t.__name__))
            self.send_error_page(500)

    def fails(environ, start_response):
        start_response("200 OK", [])
        yield from pieces
        raise RuntimeError("the app failed")

    server = serve(fails, Pages)
    received = exchange(server.server_port, GET + GET)   # a second request, never served
    assert ("error", "RuntimeError") in server.calls
    assert received.startswith(expected)
    assert received.count(b"HTTP/1.1 ") == 1
    assert len([call for call in server.calls if call[0] == "log"]) == 1


def test_orig_status_is_the_status_format_request_logs(serve):
    class Status(Recording):
        def start_response(self, status, headers, exc_info=None):
            write = super().start_response(status, headers, exc_info)
            self.set_status("299 Pinned")
            return write

    server = serve(streamed, Status)
    received = exchange(server.server_port, GET)
    assert received.startswith(b"HTTP/1.1 299 Pinned\r\n")
    log_line = next(call[1] for call in server.calls if call[0] == "log")
    assert '"GET / HTTP/1.1" 299 ' in log_line


def test_discard_of_wsgi_input_is_called_after_each_response_once_the_app_returned(serve):
    class Body(Input):
        def __init__(self, calls):
            self.calls = calls

        def _discard(self):
            self.calls.append(("discard",))
            super()._discard()

    class WithInput(Recording):
        def get_environ(self):
            environ = super().get_environ()
            self.wsgi_input = environ["wsgi.input"] = Body(self.server.calls)
            return environ

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        environ["wsgi.input"].calls.append(("app",))
        return [b"ok"]

    server = serve(app, WithInput)
    received = exchange(server.server_port, GET + GET)
    assert received.count(b"HTTP/1.1 200 OK") == 2
    order = [call[0] for call in server.calls if call[0] in ("app", "discard", "log")]
    assert order == ["app", "discard", "log"] * 2
