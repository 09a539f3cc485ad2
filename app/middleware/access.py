"""WSGI middleware: request IDs, the access log, per-request metrics and Server-Timing.

``RequestLog`` wraps any WSGI app. It gives each request an ``X-Request-ID`` (kept from a
trusted proxy, otherwise generated) and returns it to the client with a ``Server-Timing``
header (upstream and total time to the response headers; the backend's URL only with
``expose_backends``: by default nothing sent to a client names a backend). When
the server closes the response body, it writes one access line and hands the outcome to
``Metrics.observe``, reading what the layers below left in the request's ``Request``
(``app.request``, ``environ["myproxy.request"]``): its route, backend, attempts, error,
time to the response head, whether the client left (logged as status 499) and whether
a rate limit refused it (``limited=rate``, counted by route) from the proxy, with
``sticky=hit|new|rebalanced`` in a pool with a sticky cookie; ``admin``
from the admin surface and ``redirect`` from the redirect to https (both
logged but not counted as traffic; admin requests are logged ``admin=true``). Over TLS, the line also has the
protocol version and whether the session was resumed (``app.server.tls.connection_tls``),
and ``tls.hsts`` adds ``Strict-Transport-Security`` to the response. Usage::

    app = RequestLog(proxy, metrics)

Its settings (``access_log``, ``server_timing``, ``expose_backends``, ``forwarded``) are those of the request's
runtime (``Request.runtime``). It knows nothing of backends beyond those fields.
"""
from __future__ import annotations

import logging
import time
from operator import itemgetter
from random import getrandbits
from typing import TYPE_CHECKING, Callable, Iterable

from ..config import NO_ROUTE
from ..request import KEY as REQUEST, Request
from ..errors import UpstreamError
from ..logs import PLAIN_TEXT, TextFormatter, direct_handler, info_fields, render_value
from ..server.tls import connection_tls, hsts_value

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("myproxy.access")

REQUEST_ID_HEADER = "X-Request-ID"
HSTS_HEADER = "Strict-Transport-Security"   # RFC 6797; sent over HTTPS only (§7.2)
MAX_REQUEST_ID = 200          # longer IDs from a trusted proxy are replaced
SERVER_TIMING_HEADER = "Server-Timing"   # W3C Server Timing
CLIENT_CLOSED_REQUEST = "499"   # nginx's status in the log for a client that left (proxy.py)


class RequestLog:
    """Assigns request IDs, logs one line per request, and counts it."""

    def __init__(self, app: Callable, metrics: "Metrics | None" = None):
        self.app = app
        self.metrics = metrics

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.monotonic()
        request = environ[REQUEST]
        config = request.runtime.config
        request_id = environ.get("HTTP_X_REQUEST_ID", "")
        if not (request_id and len(request_id) <= MAX_REQUEST_ID and request_id.isprintable()
                and config.forwarded.trusts(environ.get("REMOTE_ADDR", ""))):
            # 96 random bits in hex. ``random`` (reseeded in each forked child) rather than
            # ``os.urandom``: a request ID must be unique, not secret, and this takes no
            # system call.
            request_id = "%024x" % getrandbits(96)
        request.id = request_id
        state = {"status": "-"}
        timing = config.server_timing
        expose = config.expose_backends
        hsts = 0
        if environ.get("wsgi.url_scheme") == "https":
            # Read now: a tunnel's socket is shut down by the time the line is written.
            environ["myproxy.tls"] = session = connection_tls(environ)
            if session is not None and config.tls is not None:   # never over plain HTTP
                hsts = config.tls.hsts

        def start(status: str, headers: list, exc_info=None):
            state["status"] = status.split(" ", 1)[0]
            headers.append((REQUEST_ID_HEADER, request_id))
            if timing:
                headers.append((SERVER_TIMING_HEADER, server_timing(request, started, expose)))
            if hsts and not any(name.lower() == "strict-transport-security" for name, _ in headers):
                headers.append((HSTS_HEADER, hsts_value(hsts)))   # the backend's own wins
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        if request.tunnel is not None:
            # An upgraded connection that has ended: log and count it now, and give the server
            # its "already handled" marker unwrapped (app.handoff).
            self.finish(environ, state["status"], request.tunnel,
                        request.body.received if request.body is not None else 0, started,
                        tunnel=True)
            return body
        return _LoggedBody(body, self, environ, state, started)

    def finish(self, environ: dict, status: str, sent: int, received: int, started: float,
               tunnel: bool = False) -> None:
        """Count and log one finished request (or tunnel: its life is no request latency)."""
        duration = time.monotonic() - started
        request = environ[REQUEST]
        error = request.error
        aborted = request.client_aborted
        if aborted:
            status = CLIENT_CLOSED_REQUEST      # mid-body too: the client did not get it all
        admin = request.admin
        backend = request.backend
        route = request.route or NO_ROUTE
        tried = request.tried
        sticky = request.sticky
        if request.runtime.config.access_log:
            upstream = request.upstream_duration
            values = (request.id, environ.get("REMOTE_ADDR") or None,
                      environ.get("REQUEST_METHOD"), environ.get("HTTP_HOST"),
                      environ.get("RAW_URI") or target_of(environ),
                      int(status) if status.isdigit() else None, received, sent,
                      round(duration * 1000, 2),
                      round(upstream * 1000, 2) if upstream is not None else None,
                      route, backend, len(tried), _tried(tried),
                      environ.get("HTTP_USER_AGENT"))
            session = environ.get("myproxy.tls")
            queued = request.queued
            if session is not None or error is not None or admin or queued is not None or \
                    not _write_plain(values, sticky):
                _write_fields(values, request, session)
        if self.metrics is not None and not admin and status.isdigit() and not request.redirect:
            self.metrics.observe(route, backend, int(status), None if tunnel else duration, tried,
                                 error.kind if isinstance(error, UpstreamError) else None)
            if aborted:
                self.metrics.client_aborted(route, backend)
            if sticky is not None:
                self.metrics.sticky(route, sticky)
            if request.limited:
                self.metrics.rate_limited(route)


# The access line's fields, in order; a line of no other fields whose values need no
# quoting (nearly all: the user agent, last, is rendered on its own, as it often has
# spaces) is rendered by one format (``_write_plain``), the same text that
# ``logs.render_fields`` makes of them (tested).
ACCESS_KEYS = ("request_id", "client", "method", "host", "target", "status", "bytes_in",
               "bytes_out", "duration_ms", "upstream_ms", "route", "backend", "attempts", "tried",
               "user_agent")
_ACCESS_FORMAT = " ".join(f"{key}=%s" for key in ACCESS_KEYS)
_TEXT_VALUES = (0, 1, 2, 3, 4, 10, 11, 13)   # where ACCESS_KEYS' values are text or None
_text_values = itemgetter(*_TEXT_VALUES)


def _write_fields(values: tuple, request: Request, session) -> None:
    """The access line of ``values`` and the request's other fields, through ``info_fields``."""
    fields = dict(zip(ACCESS_KEYS, values))
    queued = request.queued
    if queued is not None:
        fields["queued_ms"] = round(queued * 1000, 2)   # waited for a slot (max_conns)
    if session is not None:
        fields["tls"], fields["resumed"] = session[0], int(session[1])
    if request.error is not None:
        fields["error"] = request.error.kind
    if request.limited:
        fields["limited"] = request.limited
    if request.admin:
        fields["admin"] = True
    if request.sticky is not None:
        fields["sticky"] = request.sticky       # last, as _write_plain writes it
    info_fields(log, fields)


def _write_plain(values: tuple, sticky: str | None = None) -> bool:
    """Write the access line of ``values`` (and ``sticky=``, when the pool has a sticky
    cookie) straight to the text log, if it goes there and no value needs
    ``render_value``'s quoting; False if it was left to ``info_fields``."""
    if not log.isEnabledFor(logging.INFO):
        return True
    shown = ["-" if value is None else value for value in values]
    # Text values that render_value shows as they are (PLAIN_TEXT), but never an empty one
    # (render_value quotes it: ""); the user agent, last, often has spaces.
    if "" in shown[:-1] or PLAIN_TEXT("".join(_text_values(shown))) is None:
        return False
    agent = shown[-1]
    if agent == "" or PLAIN_TEXT(agent) is None:
        shown[-1] = render_value(values[-1])
    line = _ACCESS_FORMAT % tuple(shown)
    handler = direct_handler(log)
    if handler is None or not isinstance(handler.formatter, TextFormatter):
        return False
    handler.write_text(log.name, line if sticky is None else f"{line} sticky={sticky}")
    return True


class _LoggedBody:
    """The response body, as it is; logs the request when the server closes it.

    The bytes sent are a list's length, or what the proxy's body counted as it streamed
    (``counts_sent``: ``Request.sent``); any other iterable is counted here."""

    __slots__ = ("_body", "_owner", "_environ", "_state", "_started")

    def __init__(self, body, owner: RequestLog, environ: dict, state: dict, started: float):
        self._body = body
        self._owner = owner
        self._environ = environ
        self._state = state
        self._started = started

    def __iter__(self):
        body = self._body
        if isinstance(body, list) or getattr(body, "counts_sent", False):
            return iter(body)
        return self._counted()

    def _counted(self):
        request = self._environ[REQUEST]
        for chunk in self._body:
            request.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        body = self._body
        try:
            close = getattr(body, "close", None)     # PEP 3333: whoever wraps it closes it
            if close is not None:
                close()
        finally:
            request = self._environ[REQUEST]
            sent = sum(map(len, body)) if isinstance(body, list) else request.sent
            received = request.body.received if request.body is not None else 0
            self._owner.finish(self._environ, self._state["status"], sent, received,
                               self._started)


def server_timing(request: Request, started: float, name_backend: bool = False) -> str:
    """``upstream;dur=MS, total;dur=MS``: times to the response headers; with
    ``name_backend``, ``upstream`` has ``desc="BACKEND"`` too."""
    total = f"total;dur={(time.monotonic() - started) * 1000:.1f}"
    upstream = request.upstream_duration
    backend = request.backend
    if upstream is None or backend is None:
        return total
    if not name_backend:
        return f"upstream;dur={upstream * 1000:.1f}, {total}"
    name = backend.replace("\\", "\\\\").replace('"', '\\"')
    return f'upstream;dur={upstream * 1000:.1f};desc="{name}", {total}'


def _tried(attempts) -> str | None:
    """``url(why it failed),url`` for each backend tried, or None."""
    if len(attempts) == 1 and attempts[0][1] is None:
        return attempts[0][0]           # one attempt, answered: nearly every request
    return ",".join(url + (f"({failure})" if failure else "") for url, failure in attempts) or None


def target_of(environ: dict) -> str:
    """The request target, rebuilt from the environ, for a server that gives no ``RAW_URI``."""
    query = environ.get("QUERY_STRING")
    return environ.get("PATH_INFO", "") + ("?" + query if query else "")
