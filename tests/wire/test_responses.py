"""app.wire.responses: the one rendering of an error the proxy answers itself."""
from app.errors import BadRequest, NoBackendAvailable
from app.wire.responses import error_response, render_head


def test_an_error_renders_its_status_headers_and_text():
    status_line, headers, body = error_response(BadRequest("invalid header name"), close=True)
    assert status_line.startswith("400 ")
    assert headers[:2] == [("Content-Type", "text/plain; charset=utf-8"),
                           ("Content-Length", str(len(body)))]
    assert headers[-1] == ("Connection", "close")
    assert b"invalid header name" in body


def test_an_error_keeps_its_own_headers_and_the_connection_unless_told():
    _, headers, _ = error_response(NoBackendAvailable("every backend is down"))
    names = [name for name, _ in headers]
    assert "Retry-After" in names and "Connection" not in names


def test_a_head_on_the_wire():
    assert render_head("400 Bad Request", [("Content-Length", "0")]) == \
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
