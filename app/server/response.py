"""Writing the response on a client connection: ``ResponseWriter``, the half of
``app.server.handler.Handler`` that runs the app and sends what it returns.

- ``start_response`` checks and encodes the header lines once (``header_block``, as
  pywsgi's checks: a name or value that is not a latin-1 native string, or a CR or LF in
  one, is refused), drops ``Content-Length`` from a 204 or 304 (legal there, STACK-FACTS
  17), and adds ``Connection: close`` from SIGTERM on or after a body left unread, and a
  ``Date`` made once a second;
- ``write`` sends the head with the body's first piece when that is small (one send), the
  framing the head needs (``Content-Length`` for a list, else chunked; for HTTP/1.0 the end
  of the connection), and never a body after a HEAD, 1xx, 204 or 304;
- an error before the head went out is answered with its status (a failed backend's, not
  a 500); one after it closes the connection, so a cut body never looks complete.

It knows the handler's socket, request line and input (``finished``), nothing of proxying.
"""
from __future__ import annotations

import errno
import logging
import socket
import time

import gevent

from ..errors import ProxyError, UpstreamError
from ..wire import http1
from ..wire.gevent_adapter import send_all
from ..wire.responses import error_response
from .pywsgi_adapter import format_date_time

log = logging.getLogger("myproxy.server")

COALESCE_BYTES = 16 * 1024   # a first body piece up to this size goes out with the head
_QUIET_ERRORS = (errno.EPIPE, errno.ECONNRESET)   # a client gone mid-response: just close
_SERVER_ERROR = ("500 Internal Server Error", (("Content-Type", "text/plain"), ("Connection", "close"),
                 ("Content-Length", "21")), b"Internal Server Error")


class ResponseWriter:
    """``WSGIHandler`` methods that run the app and write its response (module docstring)."""

    body_follows = True  # the response being written has a body (not HEAD, 1xx, 204, 304)

    def handle_one_response(self):
        """Run the app and write what it returns; errors are answered (``handle_error``)."""
        self.status = None
        self.headers_sent = False
        self.response_use_chunked = False
        self.response_length = 0
        self.code = 0
        self.result = None
        try:
            result = self.result = self.server.application(self.environ, self.start_response)
            try:
                if not self.taken_over:
                    for data in result:
                        if data:
                            self.write(data)
                    if not self.headers_sent:
                        if self.status is None:
                            raise AssertionError("the application did not call start_response()")
                        self.write(b"")
                    if self.response_use_chunked:
                        self.send(http1.LAST_CHUNK)
            finally:
                close = getattr(result, "close", None)   # PEP 3333: the server closes it
                if close is not None:
                    close()
        except OSError as error:
            if error.errno in _QUIET_ERRORS:
                self.close_connection = True
            else:
                self.handle_error(type(error), error, error.__traceback__)
        except BaseException as error:  # noqa: BLE001 - answered or logged, never lost
            if isinstance(error, (SystemExit, KeyboardInterrupt)):
                raise
            self.handle_error(type(error), error, error.__traceback__)

    def start_response(self, status, headers, exc_info=None):
        """PEP 3333's ``start_response``, checked as pywsgi's is, plus: ``Content-Length``
        is dropped from a 204 or 304 (pywsgi rejects a legal one, STACK-FACTS 17), and
        ``Connection: close`` is added from SIGTERM on or when the request body was not
        read to its end (the connection cannot carry another). The header lines are
        checked and encoded as one block (``header_block``)."""
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        if not isinstance(status, str):
            raise UnicodeError("The status string must be a native string")
        if "\r" in status or "\n" in status:
            raise ValueError("carriage return or newline in status", status)
        code = int(status.split(" ", 1)[0])
        connection = date = length = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                length = value
            elif lower == "connection":
                connection = value
            elif lower == "date":
                date = value
        if length is not None and code in http1.NO_BODY_STATUSES:   # legal on HEAD
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            length = None
        block = header_block(headers)
        self.body_follows = http1.response_has_body(self.command, code)
        if connection != "close" and (self.server.shutdown.closing
                                      or not self.wsgi_input.finished):
            block += b"Connection: close\r\n"
            connection = "close"
        elif connection is None and self.request_version == "HTTP/1.0":   # say what happens next
            block += b"Connection: close\r\n" if self.close_connection \
                else b"Connection: keep-alive\r\n"
        elif connection is None and self.close_connection:
            # The client asked to close: RFC 9112 §9.6, the server SHOULD say "close" too
            # (wrk, for one, otherwise reads the end of the connection as an error).
            block += b"Connection: close\r\n"
        if connection == "close":
            self.close_connection = True
        if date is None:
            block += date_line()
        self.status = status.encode("latin-1")
        self.code = code
        self.response_headers = block
        self.provided_content_length = length
        return self.write

    def write(self, data) -> None:
        """Send one piece of the body (PEP 3333's ``write``); the first sends the head,
        with the piece when it is not large. No body goes out after a HEAD, 204 or 304."""
        if data and not self.body_follows and self.code in http1.NO_BODY_STATUSES:
            raise AssertionError(f"the {self.code} response must have no body")
        if self.headers_sent:
            if data and self.body_follows:
                self.send(http1.encode_chunk(data) if self.response_use_chunked else data)
            return
        if self.status is None:
            raise AssertionError("the application did not call start_response()")
        self.headers_sent = True
        block = self.response_headers
        if not self.body_follows:
            data = b""           # a HEAD's answer (or a 1xx's): the head alone
        elif self.provided_content_length is None:
            if hasattr(self.result, "__len__"):      # a list: its length is known
                block += b"Content-Length: %d\r\n" % sum(len(piece) for piece in self.result)
            elif self.request_version != "HTTP/1.0":
                self.response_use_chunked = True
                block += b"Transfer-Encoding: chunked\r\n"
            else:        # HTTP/1.0 has no chunks: the end of the connection ends the body
                self.close_connection = True
                block = block.replace(b"Connection: keep-alive\r\n", b"Connection: close\r\n")
        head = b"HTTP/1.1 %b\r\n%b\r\n" % (self.status, block)
        if data and self.response_use_chunked:
            data = http1.encode_chunk(data)
        if not data or len(data) > COALESCE_BYTES:
            self.send(head)
            if data:
                self.send(data)
        else:
            self.send(head + data)

    def send(self, data) -> None:
        """Send ``data`` (any part of the response), counted in ``response_length``; on a
        socket error, the status says so (a negative code) and the error is raised."""
        try:
            send_all(self.socket, data)
        except OSError as error:
            self.status = f"socket error: {error}".encode("latin-1", "replace")
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def handle_error(self, kind, error, traceback):
        """An error while answering: a client that stopped reading is cut off; a typed
        error before a byte was sent is answered with its status; anything else is logged
        and answered 500 if nothing went out, else the connection closes."""
        self.close_connection = True
        if issubclass(kind, (socket.timeout, TimeoutError)):
            log.info("closing the connection of %s: it stopped reading the response",
                     self.client())
            return
        if not issubclass(kind, (UpstreamError, gevent.GreenletExit)):
            log.error("unhandled error serving %s %s", self.command, self.path,
                      exc_info=(kind, error, traceback))
        if self.taken_over or self.headers_sent:
            return       # a tunnel owns the connection, or the head went out already
        if isinstance(error, ProxyError):
            # The backend failed before a byte was sent: answer its status, not a 500.
            status_line, headers, body = error_response(error, close=True)
        else:
            status_line, headers, body = _SERVER_ERROR
        try:
            self.start_response(status_line, list(headers))
            self.write(body)
        except OSError:
            pass


def header_block(headers) -> bytes:
    """The header lines of ``headers``, each ending in CRLF, as bytes: one join and one
    encode for them all. Raises ``UnicodeError`` for a name or value that is not a native
    string or not latin-1, and ``ValueError`` for a CR or LF in one (a response split in
    two), as pywsgi does."""
    try:
        text = http1.field_lines(headers)
    except TypeError:
        raise UnicodeError("The header must be a native string", headers) from None
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        bad = next(pair for pair in headers if any("\r" in part or "\n" in part for part in pair))
        raise ValueError("carriage return or newline in header", *bad)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise UnicodeError("Non-latin1 header", headers) from None


_date = [0, b""]         # the second and its Date line, made once a second


def date_line() -> bytes:
    """The ``Date`` line for now (RFC 9110 §6.6.1), made once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[:] = now, b"Date: %b\r\n" % format_date_time(now)   # bytes, from pywsgi
    return _date[1]
