"""One request's state as it crosses the layers: one object, in one environ key.

``App`` puts a ``Request`` in ``environ[KEY]`` as a request comes in, with the runtime in
force, which the request then uses to its end (a reload changes the next request's).
``RequestLog`` gives it its id; the admin surface and the redirect mark what they
answered; the proxy fills in the route, the backend and each attempt, the body, the error,
the time in the queue, the time to the response head, a client that left, a tunnel's bytes,
what a sticky cookie did, a refusal by a rate limit. The access line and the metrics read it
when the response ends.

What a server hands the app stays in the server's own environ keys (the header lines as
received, the client socket and its watcher, TLS facts, the hand-over of the connection):
that is each server's interface to a WSGI app, as ``gunicorn.socket`` is gunicorn's.

A leaf: it imports nothing of the app, and knows nothing of what fills it in.
"""
from __future__ import annotations

KEY = "myproxy.request"


class Request:
    """What is known of one request so far. Every field has its "not yet" value."""

    __slots__ = ("runtime", "id", "route", "backend", "tried", "error", "upstream_duration",
                 "client_aborted", "admin", "redirect", "tunnel", "body", "queued", "sticky",
                 "limited")

    def __init__(self, runtime, request_id: str = ""):
        self.runtime = runtime              # the config, route table and pools in force
        self.id = request_id                # X-Request-ID (RequestLog)
        self.route: str | None = None       # the name of the pool that took it
        self.backend: str | None = None     # the URL of the backend of the last attempt
        self.tried: list = []               # (url, failure kind, "stale" or None) per attempt
        self.error = None                   # the ProxyError answered, or a body's failure
        self.upstream_duration: float | None = None   # seconds from the last send to its head
        self.client_aborted = False         # the client left before its response was sent
        self.admin = False                  # answered by the admin surface
        self.redirect = False               # answered by tls.redirect_from's 308
        self.tunnel: int | None = None      # an upgraded connection's bytes to the client
        self.queued: float | None = None    # seconds waited in its pool's queue (max_conns)
        self.sticky: str | None = None      # hit | new | rebalanced (app.lb.sticky); None: off
        self.limited: str | None = None     # "rate": refused by the pool's rate limit
        self.body = None                    # the proxy's RequestBody: what it read, and kept

    @property
    def attempts(self) -> int:
        return len(self.tried)
