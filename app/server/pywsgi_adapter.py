"""pywsgi's private handler methods, in one place: ``BaseHandler`` is the only class that
overrides or calls them, and gives ``app.server.standalone.Handler`` plainly named hooks
instead. For gevent 26.9's ``gevent.pywsgi`` (``requirements-runtime.txt`` pins it);
``tests/server/test_pywsgi_adapter.py`` pins each one by name on a real server, so that a
gevent bump that changes one fails there first.

Relied on, in ``gevent.pywsgi.WSGIHandler``:

- ``_sendall(data)``: every byte of a response goes out through it (the head, each body
  piece, the final chunk ``process_result`` writes), adding to ``response_length``. The
  hook ``send`` replaces it.
- ``_write_with_headers(data)``: what ``write`` calls for a response's first piece (``b""``
  for an empty body), once, after ``start_response``; it finalizes and sends the head. The
  hook ``send_head`` replaces it.
- ``_write(data)``: one body piece, chunk-framed when ``response_use_chunked``, through
  ``_sendall``; called as ``send_body``.
- ``_handle_client_error(ex)``: what ``handle_one_response`` calls when reading the
  request body raised pywsgi's invalid-input error (then it answers 400); the hook
  ``client_input_error`` replaces it.
- ``_send_error_response_if_possible(code)``: pywsgi's error page for ``code`` when
  nothing of the response went out, else the connection closes; called as
  ``send_error_page``.
- ``_orig_status``: the status line as a ``str`` next to ``status``'s bytes, which
  ``format_request`` reads; ``set_status`` sets both.
- ``wsgi.input``'s ``_discard()``: ``handle_one_response`` calls it after each response,
  whatever the app did; ``Input`` gives a body reader one.

Not private, but pywsgi's internals all the same, and read by ``Handler``: the response
state pywsgi keeps on the handler (``status``, ``code``, ``response_headers``,
``headers_sent``, ``response_use_chunked``, ``response_length``, ``provided_date``,
``provided_content_length``, ``close_connection``, ``result``) and the methods it calls
in turn (``handle``, ``handle_one_request``, ``read_requestline``, ``read_request``,
``get_environ``, ``handle_one_response``, ``start_response``, ``finalize_headers``,
``process_result``, ``handle_error``, ``log_request``); ``tests/server`` covers those
through every response it reads.

It knows nothing of HTTP's rules nor of MyProxy: the hooks' versions here are pywsgi's own.
"""
from __future__ import annotations

from gevent.pywsgi import WSGIHandler


class BaseHandler(WSGIHandler):
    """``WSGIHandler`` with its private methods behind plainly named hooks (module docstring)."""

    # pywsgi calls these ---------------------------------------------------------------

    def _sendall(self, data):
        self.send(data)

    def _write_with_headers(self, data):
        self.send_head(data)

    def _handle_client_error(self, ex):
        return self.client_input_error(ex)

    # Hooks: pywsgi's versions, to override --------------------------------------------

    def send(self, data) -> None:
        """Send ``data`` (any part of the response) and count it in ``response_length``;
        on a socket error, mark ``status`` and ``code`` as failed and raise it."""
        WSGIHandler._sendall(self, data)

    def send_head(self, data) -> None:
        """Send the response head (``finalize_headers`` first), then ``data``, the body's
        first piece (``b""`` when there is none). Called once per response."""
        WSGIHandler._write_with_headers(self, data)

    def client_input_error(self, ex):
        """Log a request body pywsgi found invalid; return what pywsgi's would (it answers
        400 and closes the connection afterwards)."""
        return WSGIHandler._handle_client_error(self, ex)

    # pywsgi's, to call ------------------------------------------------------------------

    def send_body(self, data) -> None:
        """Send one piece of the body, as a chunk when the response is chunked."""
        self._write(data)

    def send_error_page(self, code: int) -> None:
        """pywsgi's answer for ``code`` (500, 400) if nothing of a response has gone out;
        otherwise the connection closes after this request."""
        self._send_error_response_if_possible(code)

    def set_status(self, status: str) -> None:
        """The response's status line (``"200 OK"``), where pywsgi keeps it."""
        self.status = status.encode("latin-1")
        self._orig_status = status


class Input:
    """Base of a ``wsgi.input`` that pywsgi serves. pywsgi calls ``_discard`` after each
    response to read and drop what the app left of the body; this reads nothing (a body
    left unread closes the connection instead, ``Handler.start_response``)."""

    def _discard(self) -> None:
        pass
