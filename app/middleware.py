"""WSGI middleware: request IDs, the access log, and connection control under gunicorn.

``RequestLog`` wraps any WSGI app. It gives each request an ``X-Request-ID`` (kept from a
trusted proxy, otherwise generated), returns it to the client, and writes one access line
when the response body is closed, reading what the proxy left in ``myproxy.*`` environ
keys. Usage::

    app = RequestLog(proxy, settings)     # settings: the ConfigHolder of the config in force

It knows nothing of backends beyond those keys.

``ServerConnection`` gives gunicorn's gevent worker what ``python wsgi.py``'s own handler
does itself: a client that stops sending its body or reading the response is cut off
(``timeouts.client_idle``), and a response that
says ``Connection: close`` (every refused request) really closes the connection, so
nothing pipelined behind it runs. Under ``python wsgi.py`` it passes through.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable

from .config import ConfigHolder, ForwardedConfig

log = logging.getLogger("myproxy.access")

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 200          # longer IDs from a trusted proxy are replaced


def new_request_id() -> str:
    return os.urandom(12).hex()


class RequestLog:
    """Assigns request IDs and logs one line per request."""

    def __init__(self, app: Callable, settings: ConfigHolder):
        self.app = app
        self.settings = settings

    @property
    def forwarded(self) -> ForwardedConfig:
        return self.settings.config.forwarded

    @property
    def enabled(self) -> bool:
        return self.settings.config.access_log

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.monotonic()
        request_id = environ.get("HTTP_X_REQUEST_ID", "")
        if not (request_id and len(request_id) <= MAX_REQUEST_ID and request_id.isprintable()
                and self.forwarded.trusts(environ.get("REMOTE_ADDR", ""))):
            request_id = new_request_id()
        environ["myproxy.request_id"] = request_id
        state = {"status": "-"}

        def start(status: str, headers: list, exc_info=None):
            state["status"] = status.split(" ", 1)[0]
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        if "myproxy.tunnel" in environ:
            # An upgraded connection that has ended: log it now, and give the server its
            # "already handled" marker unwrapped (app.handoff).
            self.write(environ, state["status"], environ["myproxy.tunnel"], started)
            return body
        return _LoggedBody(body, self, environ, state, started)

    def write(self, environ: dict, status: str, sent: int, started: float) -> None:
        if not self.enabled:
            return
        error = environ.get("myproxy.error")
        log.info(
            "request_id=%s client=%s method=%s target=%s status=%s bytes=%d duration_ms=%.1f "
            "backend=%s attempts=%s tried=%s%s",
            environ["myproxy.request_id"], environ.get("REMOTE_ADDR", "-"),
            environ.get("REQUEST_METHOD", "-"), _quote(target_of(environ)), status, sent,
            (time.monotonic() - started) * 1000, environ.get("myproxy.backend", "-"),
            environ.get("myproxy.attempts", 0), _tried(environ.get("myproxy.tried")),
            f" error={error.kind}" if error is not None else "",
        )


class _LoggedBody:
    """Passes the body through, counting bytes; logs when the server closes it."""

    def __init__(self, body, owner: RequestLog, environ: dict, state: dict, started: float):
        self._body = body
        self._owner = owner
        self._environ = environ
        self._state = state
        self._started = started
        self._sent = 0

    def __iter__(self):
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._owner.write(self._environ, self._state["status"], self._sent, self._started)


def _tried(attempts) -> str:
    """``url(why it failed),url`` for each backend tried, or ``-``."""
    return ",".join(url + (f"({failure})" if failure else "") for url, failure in attempts or ()) or "-"


def target_of(environ: dict) -> str:
    raw = environ.get("RAW_URI")
    if raw is not None:
        return raw
    query = environ.get("QUERY_STRING")
    return environ.get("PATH_INFO", "") + ("?" + query if query else "")


def _quote(text: str) -> str:
    """A log-safe rendering: quoted when it holds spaces, quotes or control characters."""
    if text and text.isprintable() and " " not in text and '"' not in text:
        return text
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


class CloseConnection(Exception):
    """Raised after the last byte of a response that must close its connection, on a
    server that ignores the app's ``Connection: close`` (gunicorn), which then closes it."""


class ServerConnection:
    """What the app needs from a server that hands it the client socket but keeps the
    connection (gunicorn's gevent worker, ``gunicorn.socket``): a timeout on each read of
    the body and write of the response, and a ``Connection: close`` from the app honoured.
    Elsewhere it passes straight through.

    Usage: ``app = ServerConnection(app, send_timeout=config.timeouts.client_idle)``.
    """

    SOCKET_KEY = "gunicorn.socket"

    def __init__(self, app: Callable, send_timeout: float):
        self.app = app
        self.send_timeout = send_timeout

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        sock = environ.get(self.SOCKET_KEY)
        if sock is None:
            return self.app(environ, start_response)
        state = {"close": False}

        def start(status: str, headers: list, exc_info=None):
            state["close"] = any(name.lower() == "connection" and value.lower() == "close"
                                 for name, value in headers)
            return start_response(status, headers, exc_info)

        if self.send_timeout:
            # Each read of the body and each write of the response; gunicorn's own timer
            # (keepalive) covers the wait for the next request once this is undone.
            sock.settimeout(self.send_timeout)
        body = self.app(environ, start)
        if "myproxy.tunnel" in environ:
            return body          # an upgraded connection, ended: gunicorn's marker, as is
        return _ServerBody(body, sock, state)


class _ServerBody:
    """Passes the body through, then closes the connection if asked; restores the socket."""

    def __init__(self, body, sock, state: dict):
        self._body = body
        self._sock = sock
        self._state = state

    def __iter__(self):
        yield from self._body
        if self._state["close"]:
            yield b""            # makes the server send the headers of an empty body first
            raise CloseConnection("the response asked to close the connection")

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            try:
                self._sock.settimeout(None)
            except OSError:
                pass
