"""WSGI middleware: request IDs and the access log.

``RequestLog`` wraps any WSGI app. It gives each request an ``X-Request-ID`` (kept from a
trusted proxy, otherwise generated), returns it to the client, and writes one access line
when the response body is closed, reading what the proxy left in ``myproxy.*`` environ
keys. Usage::

    app = RequestLog(proxy, forwarded=config.forwarded, enabled=config.access_log)

It knows nothing of backends beyond those keys.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable

from .config import ForwardedConfig

log = logging.getLogger("myproxy.access")

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 200          # longer IDs from a trusted proxy are replaced


def new_request_id() -> str:
    return os.urandom(12).hex()


class RequestLog:
    """Assigns request IDs and logs one line per request."""

    def __init__(self, app: Callable, forwarded: ForwardedConfig = ForwardedConfig(),
                 enabled: bool = True):
        self.app = app
        self.forwarded = forwarded
        self.enabled = enabled

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
