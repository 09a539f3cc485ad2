"""Typed errors the proxy answers itself, each carrying the HTTP status it means.

Imports nothing from the app. The proxy turns any ``ProxyError`` into one response in one
place; the classes here only say which status, which reason phrase, and what to tell the
client. What went wrong on the far side (a backend's address, its failure) is the
operator's: an error's body says it only when asked (``detail``, the config's
``expose_backends``); the log always has it.
"""
from __future__ import annotations

import os


class ProxyError(Exception):
    """An error the proxy answers with ``status`` and a short plain-text body."""

    status = 500
    reason = "Internal Server Error"
    kind = "internal"       # the label used in logs and metrics
    # Whether ``detail`` is the operator's to see (a backend, its failure) rather than the
    # client's (what was wrong with its own request): then a body leaves it out by default.
    private = True

    def __init__(self, detail: str = "", backend: str = ""):
        self.detail = detail
        self.backend = backend
        super().__init__(detail)

    @property
    def status_line(self) -> str:
        return f"{self.status} {self.reason}"

    def body(self, route: str | None = None, request_id: str | None = None,
             detail: bool = False, backend: str | None = None) -> bytes:
        """The plain-text body sent to the client: what happened, never a traceback; then
        the request's route and ID, by which the operator finds the rest in the log. With
        ``detail``, also the failure's own words and the ``backend`` that failed."""
        shown = detail or not self.private
        context = [f"{key}={value}" for key, value in
                   (("route", route), ("request_id", request_id),
                    ("backend", backend if shown else None)) if value]
        return (f"{self.status} {self.reason}: {self.public_message(shown)}"
                f"{' (' + ' '.join(context) + ')' if context else ''}\n").encode()

    def public_message(self, detail: bool = True) -> str:
        """What happened, in a few words; with ``detail``, in the failure's own words."""
        return (self.detail if detail else "") or self.reason.lower()

    def headers(self) -> list[tuple[str, str]]:
        return []


class ClientError(ProxyError):
    """The client's request is at fault. It never reaches a backend, and the connection is
    closed after the answer (the rest of what the client sent cannot be trusted)."""

    status, reason, kind = 400, "Bad Request", "bad_request"
    private = False         # the detail is about the client's own request
    # The WSGI server's own exception when it raised first (gunicorn's parser reading the
    # body): re-raised so that server answers and closes the connection its own way.
    server_error: BaseException | None = None


class BadRequest(ClientError):
    status, reason, kind = 400, "Bad Request", "bad_request"


class MethodNotAllowed(ClientError):
    status, reason, kind = 405, "Method Not Allowed", "method_not_allowed"

    def headers(self) -> list[tuple[str, str]]:
        return [("Allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE")]


class ClientTimeout(ClientError):
    status, reason, kind = 408, "Request Timeout", "client_timeout"


class BodyTooLarge(ClientError):
    status, reason, kind = 413, "Content Too Large", "body_too_large"


class UriTooLong(ClientError):
    status, reason, kind = 414, "URI Too Long", "uri_too_long"


class HeadersTooLarge(ClientError):
    status, reason, kind = 431, "Request Header Fields Too Large", "headers_too_large"


class VersionNotSupported(ClientError):
    status, reason, kind = 505, "HTTP Version Not Supported", "version_not_supported"


class NoBackendAvailable(ProxyError):
    """Every backend is down, drained, or already tried for this request."""

    status, reason, kind = 503, "Service Unavailable", "no_backend"
    retry_after = 5

    def public_message(self, detail: bool = True) -> str:
        return "no backend is available to serve this request" + (
            f" ({self.detail})" if self.detail and detail else "")

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class QueueRejected(NoBackendAvailable):
    """Every eligible backend of the route is at its ``max_conns`` and the request could not
    wait for a slot: the queue is full (``full``), the wait passed ``queue.timeout``
    (``timeout``), or the proxy is shutting down (``shutdown``). The body names the route and
    the queue, never a backend: it says nothing the client could not know."""

    kind = "queue"
    MESSAGES = {"full": "every backend is at its connection limit and the queue is full",
                "timeout": "every backend is at its connection limit; waited in the queue "
                           "past queue.timeout",
                "shutdown": "the proxy is shutting down; the request was waiting in the queue"}

    def __init__(self, reason: str, route: str, retry_after: int = 1):
        self.reason_code = reason            # full | timeout | shutdown: the metric's reason
        self.retry_after = retry_after
        self.kind = f"queue_{reason}"
        super().__init__(f"route {route}: {self.MESSAGES[reason]}")

    def public_message(self, detail: bool = True) -> str:
        return self.MESSAGES[self.reason_code]

    def body(self, route=None, request_id=None, detail=False, backend=None) -> bytes:
        return super().body(route, request_id, detail=False, backend=None)   # never a backend
class RateLimited(ProxyError):
    """The request's key is over its pool's ``rate_limit``: answered here, never sent on.
    The connection stays open (the client did nothing wrong but ask too often)."""

    status, reason, kind = 429, "Too Many Requests", "rate_limited"
    private = False

    def __init__(self, retry_after: int):
        self.retry_after = retry_after      # whole seconds, at least 1
        super().__init__(f"over the rate limit; try again in {retry_after} s")

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class UpstreamError(ProxyError):
    """The backend failed. ``sent`` says whether any of the request may have reached it;
    ``reused`` whether the failure was on a pooled keep-alive connection."""

    status, reason, kind = 502, "Bad Gateway", "upstream"
    sent = True
    reused = False

    @property
    def stale(self) -> bool:
        """A pooled connection the backend had already closed: not the backend's fault."""
        return False

    def public_message(self, detail: bool = True) -> str:
        return f"the backend failed: {self.detail}" if self.detail and detail else \
            "the backend failed"


class UpstreamConnectError(UpstreamError):
    """The connection could not be opened: nothing was sent, so any method may be retried."""

    kind = "connect"
    sent = False


class UpstreamConnectTimeout(UpstreamConnectError):
    status, reason, kind = 504, "Gateway Timeout", "connect_timeout"

    def public_message(self, detail: bool = True) -> str:
        return "the backend did not accept the connection in time"


class UpstreamReset(UpstreamError):
    """The connection was closed or reset before a response came back."""

    kind = "reset"

    @property
    def stale(self) -> bool:
        # A keep-alive connection closed by the backend as we reused it looks exactly
        # like this; on a fresh connection it is the backend failing.
        return self.reused


class UpstreamTimeout(UpstreamError):
    status, reason, kind = 504, "Gateway Timeout", "timeout"

    def public_message(self, detail: bool = True) -> str:
        return "the backend did not answer in time"


class UpstreamProtocolError(UpstreamError):
    kind = "invalid_response"

    @property
    def stale(self) -> bool:
        # On a pooled keep-alive connection, a head that is no response is what bytes the
        # backend wrote after its last response (a body it sent for a HEAD, say) read as
        # the answer to this request: they were there before it was sent.
        return self.reused


class StartupError(Exception):
    """What stops the process before it serves (exit 1), such as a pool whose backends DNS
    could not give within ``resolver.timeout``. Not an HTTP error: nothing answers it."""


class ListenError(StartupError):
    """The listening socket could not be had: ``cannot listen on HOST:PORT: REASON``, the
    reason as the system words it, lower-cased (``address already in use``), as nginx says
    it in one line."""

    def __init__(self, host: str, port: int, error: OSError):
        self.host, self.port, self.error = host, port, error
        # gevent's own error adds the address to strerror; the system's words are errno's
        reason = os.strerror(error.errno) if error.errno else (error.strerror or str(error))
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {shown}:{port}: {reason[:1].lower()}{reason[1:]}")


class NoRouteMatched(ProxyError):
    """No route matches the request's host and path, and there is no default pool."""

    status, reason, kind = 404, "Not Found", "no_route"
    private = False         # it echoes what the client sent: its host and path
    SHOWN = 200      # characters of the host and the path echoed in the body

    def __init__(self, host: str, path: str):
        self.host, self.path = host, path
        super().__init__(f"no route for host {host[:self.SHOWN] or '(none)'} and path "
                         f"{path[:self.SHOWN]}")
