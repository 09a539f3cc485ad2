"""One request's state as it crosses the layers: one object, in one environ key.

``App`` puts a ``Request`` in ``environ[KEY]`` as a request comes in, with the runtime in
force, which the request then uses to its end (a reload changes the next request's).
``RequestLog`` gives it its id; the admin surface and the redirect mark what they
answered; the proxy fills in the route, the backend and each attempt, the body, the error,
the time in the queue, the time to the response head, a client that left, a tunnel's bytes,
what a sticky cookie did, a refusal by a rate limit. The access line and the metrics read it
when the response ends.

What a server hands the app stays in the server's own environ keys (the header lines as
received, the connection's client watch, TLS facts, the hand-over of the connection):
that is each server's interface to a WSGI app, as ``gunicorn.socket`` is gunicorn's.

A leaf: it imports nothing of the app, and knows nothing of what fills it in.
"""
from __future__ import annotations

from types import SimpleNamespace

KEY = "myproxy.request"


class Request(SimpleNamespace):
    """What is known of one request so far: ``Request(runtime=...)``; every other field has
    its "not yet" value until a layer sets it. (A namespace: making one runs no code.)"""

    runtime = None              # the config, route table and pools in force
    id = ""                     # X-Request-ID (RequestLog)
    route: str | None = None    # the name of the pool that took it
    backend: str | None = None  # the URL of the backend of the last attempt
    tried: tuple | list = ()    # (url, failure kind, "stale" or None) per attempt (the proxy's list)
    error = None                # the ProxyError answered, or a body's failure
    upstream_duration: float | None = None   # seconds from the last send to its head
    client_aborted = False      # the client left before its response was sent
    admin = False               # answered by the admin surface
    redirect = False            # answered by tls.redirect_from's 308
    tunnel: int | None = None   # an upgraded connection's bytes to the client
    queued: float | None = None  # seconds waited in its pool's queue (max_conns)
    sticky: str | None = None   # hit | new | rebalanced (app.lb.sticky); None: off
    limited: str | None = None  # "rate": refused by the pool's rate limit
    body = None                 # the proxy's RequestBody: what it read, and kept
    sent = 0                    # bytes of the response body sent to the client

    @property
    def attempts(self) -> int:
        return len(self.tried)
