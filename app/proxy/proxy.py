"""The WSGI proxy callable: request in, upstream through the session's pools, response out.

``Proxy.__call__`` reads top to bottom like Go's ``ReverseProxy.ServeHTTP``: choose a
backend, build the outbound request, send, copy status and headers back, stream the body.
The request's route picks the pool (``app.lb.routes``); a request of one pool is only
ever sent to that pool's backends. Sending is ``_send``: a small loop that tries another
backend of the pool when ``retry.may_retry``
allows it, the budget has room and attempts are left; no retry happens once anything went
back to the client. Every failure leaves through ``_fail``, which turns a typed error into
one response. Each attempt's outcome feeds the backend's passive health. A request that
asks to switch protocols takes the same path with ``Tunnels.send`` in place of
``Upstream.send``; after a ``101``, ``Tunnels.relay`` carries the connection.

Before anything else, ``admission.admit`` decides whether the request may be forwarded
at all (origin-form target, framing, limits), and, once its route is known, the pool's
``rate_limit`` whether it may go now (``limit_rate``: 429 otherwise, before any body is
read or backend chosen); the request body streams through
``body.RequestBody``. The server gives it the raw request target in ``RAW_URI`` and the
header lines as received in ``myproxy.headers``; everything else about the request is
its ``Request`` (``app.request``, one environ key), which ``App`` made with the runtime in
force (the config, the route table and the pools). The proxy fills in its route (found by
``route_of``), backend, ``tried`` (a ``(url, failure)`` pair per attempt: the error kind,
``"stale"`` for a keep-alive reconnect, None for the answer), ``upstream_duration``
(seconds from sending the last attempt to its response headers), ``error`` and
``client_aborted``, for the logging middleware and metrics. The attempts of one request
share a ``_Trip``. With a pool's sticky cookie (``app.lb.sticky``), ``_choose`` sends the
first attempt to the backend the cookie names when it may take it; otherwise, or after a
retry, the response gets a ``Set-Cookie`` for the backend that answered, and the cookie
never reaches a backend (``_outbound_headers``). It knows nothing
about sockets, signals or logging formats.
"""
from __future__ import annotations

import errno
import http
import logging
import time
from typing import Callable, Iterator, NamedTuple

from .admission import admit
from ..lb.affinity import request_key
from ..lb.balancer import Backend
from ..lb.routes import Pool, request_host
from .body import NO_BODY, RequestBody, request_body
from ..lb.sticky import HIT, NEW, REBALANCED, without_cookie
from ..request import KEY as REQUEST, Request
from ..errors import (ClientError, NoBackendAvailable, NoRouteMatched, ProxyError,
                      RateLimited, UpstreamError, UpstreamProtocolError, UpstreamReset)
from ..wire.http1 import connection_tokens, hop_by_hop, list_tokens
from ..wire.responses import error_response
from ..wire.watch import CLIENT_WATCH, ClientAborted, ClientWatch, watch_client
from ..logs import Fields
from ..lb.ratelimit import retry_after
from ..lb.retry import may_retry
from .tunnel import SWITCHING_PROTOCOLS, Tunnels, upgrade_requested
from .transport import Upstream, classify

log = logging.getLogger("myproxy.proxy")

# Connection-specific fields a proxy must not forward, either way: RFC 9110 §7.6.1 names
# Connection itself, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade (and
# every field Connection lists). Trailer goes too: the proxy re-frames bodies and drops
# trailer fields, so announcing them would be false. Proxy-Authorization and
# Proxy-Authenticate are not hop-by-hop in RFC 9110 (RFC 2616 §13.5.1 listed them): this
# proxy never asks for proxy credentials, so per §11.7.1-§11.7.2 they are for whoever is
# behind it, and are relayed (as nginx and HAProxy do).
# HTTP2-Settings belongs to the connection it asks to upgrade (RFC 7540 §3.2.1), which
# the proxy never upgrades to HTTP/2 (tunnel.NEVER_TUNNELLED).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "http2-settings",
})

# RFC 9110 §10.1.1: the proxy answers a client's 100-continue itself, when it starts
# reading the body, and streams the body right behind the headers upstream (as nginx does).
NOT_FORWARDED = frozenset({"expect"})

# RFC 9110 §6.4.1 / §15.3.5 / §15.4.5: responses that never carry content.

# Bytes asked of the backend per read of a response body: fewer, larger reads and writes
# move a large body with less CPU; a read returns what has arrived, never waits for more.
RESPONSE_CHUNK = 1024 * 1024

# nginx's status for a request whose client closed the connection before the response
# was sent: not an HTTP status on the wire (no client is left to read it), only in logs.
CLIENT_CLOSED_REQUEST = 499

VIA_NAME = "myproxy"         # RFC 9110 §7.6.3: Via: <received protocol version> myproxy


class Proxy:
    """The WSGI application that forwards each request to a backend of its route's pool.

    The config, the route table and the pools are the request's runtime (its ``Request``,
    ``app.request``, put there once by ``App``); the proxy keeps only the transports,
    which no config changes.
    """

    def __init__(self, upstream: Upstream, tunnels: Tunnels | None = None):
        self.upstream = upstream
        self.tunnels = tunnels or Tunnels(upstream.transport)   # upgrades: WebSocket and others

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        method = environ["REQUEST_METHOD"]
        request = environ[REQUEST]
        config = request.runtime.config
        watch = None
        try:
            # A head MyProxy's own server read is checked, its target origin-form already.
            target = environ["RAW_URI"] if "myproxy.head_checked" in environ else \
                admit(environ, config.limits)
            pool = route_of(request, environ, target)
            if pool.limit is not None:
                limit_rate(pool, request, environ)
            # "" unless it asks to switch protocols (nearly every request has no Upgrade at all)
            upgrade = upgrade_requested(environ) if "HTTP_UPGRADE" in environ else ""
            if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
                request.body = body = request_body(environ, config.limits.max_body_bytes)
                body.prefetch()         # a body bad from its first byte reaches no backend
                if body.chunked and pool.settings.request_buffering:
                    body.buffer(pool.settings.request_buffering)
            else:
                request.body = body = NO_BODY   # no framing field at all: no body
            # A tunnel's handshake is short, and the tunnel sees the client go on its own.
            # The connection's own (MyProxy's server), else one for this request (gunicorn).
            watch = None if upgrade else (environ.get(CLIENT_WATCH) or watch_client(environ))
            if pool.rewrites:           # strip_prefix
                target = pool.rewrite(target)
            trip = _Trip(environ, request, pool, method, target, body, upgrade, watch)
            backend, response = self._send(trip)
        except ProxyError as error:
            if watch is not None:
                watch.close()
            return self._fail(environ, start_response, error)
        except ClientAborted:
            return _client_aborted(request, start_response)

        status = response.status
        release = pool.capacity.release
        cookie = None if request.sticky is None else _sticky_cookie(environ, request, pool, backend)
        if status == SWITCHING_PROTOCOLS:
            if upgrade:
                if cookie is not None:
                    start_response = _adding(start_response, cookie)
                try:      # an open tunnel holds its slot (max_conns) until it closes
                    return self.tunnels.relay(environ, start_response, response, backend.url,
                                              pool.settings.timeouts.tunnel_idle)
                finally:
                    release(backend)
            # RFC 9110 §15.2.2: a 101 answers only a request that asked to switch; relayed,
            # it would switch a client connection the proxy then cannot mediate (h2c).
            _finish(response, backend, release, complete=False, watch=watch)
            return self._fail(environ, start_response, UpstreamProtocolError(
                "invalid response: 101 to a request that asked for no upgrade"))
        has_body = response.has_body
        # The body's length as the response head framed it (None: chunked, or to the end).
        headers = response_headers(response.header_lines, has_body,
                                   response.length_remaining if has_body else None,
                                   getattr(response, "connection_tokens", None))
        if cookie is not None:
            headers.append(cookie)
        if not has_body:
            _finish(response, backend, release, complete=True, watch=watch)
            start_response(f"{status} {response.reason or _reason(status)}", headers)
            return iter(())
        body = ResponseBody(response, backend, request, release,
                            report=lambda backend, error: _report(pool, backend, error),
                            watch=watch)
        try:
            start_response(f"{status} {response.reason or _reason(status)}", headers)
        except BaseException:
            body.close()            # a head the server refused: the slot and connection go
            raise
        return body

    def _send(self, trip: "_Trip"):
        """Choose a backend of the trip's pool and send; after a failure that may be
        retried, try another of the same pool (never another route's).

        A pooled keep-alive connection the backend had closed is not a failure: the same
        backend gets the request again at once, on a fresh connection. Returns
        ``(backend, response)`` with the response headers read, or raises the last error.
        """
        pool, method, body = trip.pool, trip.method, trip.body
        key = None
        if pool.hash_key is not None:
            key = request_key(trip.environ, pool.hash_key, trip.request.runtime.config.forwarded)
        capacity, retries = pool.capacity, pool.settings.retries
        trip.request.tried = []
        tried: list[Backend] = []
        # A backend with a free slot (max_conns), after a wait in the queue if need be: the
        # one a sticky cookie names, when it may take the request, else the policy's.
        backend, fresh = _choose(trip, key), False
        while True:
            try:
                return backend, self._attempt(trip, backend, fresh)
            except UpstreamError as error:
                retry = may_retry(error, method, body.replayable)
                fresh = error.stale and retry
                if fresh:
                    continue        # a fresh connection is never stale: at most once each
                capacity.release(backend)
                tried.append(backend)
                if len(tried) >= retries.attempts or not retry:
                    raise
                try:        # a retry takes a slot like a first try
                    backend = capacity.acquire(key, tried, trip.watch, trip.request)
                except NoBackendAvailable:
                    raise error from None
                if not pool.budget.try_spend(retries.budget):
                    capacity.release(backend)
                    log.warning("retry budget spent: not retrying %s after %s from %s (route %s)",
                                method, error.kind, tried[-1].url, pool.name)
                    raise
                if trip.request.sticky == HIT:
                    trip.request.sticky = REBALANCED    # the cookie's backend failed it
            except BaseException:
                capacity.release(backend)   # the client left, or its body failed
                raise

    def _attempt(self, trip: "_Trip", backend: Backend, fresh: bool):
        """One try on one backend, counted in flight and fed to its passive health.

        While it waits, the trip's watch may throw ``ClientAborted`` (the client has
        gone): not an ``UpstreamError``, so it is neither reported nor retried, and the
        upstream side closes the connection instead of pooling it."""
        request, pool, body, watch, upgrade = (trip.request, trip.pool, trip.body, trip.watch,
                                               trip.upgrade)
        request.backend = backend.url
        attempts = request.tried
        attempts.append((backend.url, None))
        headers = _outbound_headers(trip.environ, request, backend,
                                    request.runtime.config.forwarded, body.length,
                                    pool.sticky.name if pool.sticky is not None else None)
        # The backend's path prefix, then the client's target byte for byte (``*`` of
        # ``OPTIONS *`` alone).
        method, target = trip.method, trip.target
        if target != "*":
            target = backend.prefix + target
        backend.requests += 1
        sent_at = time.monotonic()
        try:
            if watch is not None:
                watch.waiting()
            if upgrade:
                headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
                response = self.tunnels.send(backend.origin, method, target, headers,
                                             body.attempt(), body.chunked, fresh=fresh,
                                             timeouts=pool.settings.timeouts)
            else:
                response = self.upstream.send(backend.origin, method, target, headers,
                                              None if body is NO_BODY else body.attempt(),
                                              body.chunked,
                                              timeout=pool.upstream_timeout, fresh=fresh)
        except BaseException as error:
            request.upstream_duration = time.monotonic() - sent_at
            if watch is not None:
                watch.done_waiting()
            if isinstance(error, UpstreamError):
                attempts[-1] = (backend.url, "stale" if error.stale else error.kind)
                if not (error.stale or body.client_failed):
                    _report(pool, backend, error)
            raise
        request.upstream_duration = time.monotonic() - sent_at
        if watch is not None:
            watch.done_waiting(answered=True)   # its head goes out next: no probe from now on
        _report(pool, backend, None)
        return response

    def _fail(self, environ: dict, start_response: Callable, error: ProxyError):
        """The one exit for errors: log the cause, answer the error's status and text.

        A client's error closes the connection; one the WSGI server's own input raised goes
        back to that server, which answers and closes it its own way (gunicorn).
        """
        request = environ[REQUEST]
        request.error = error
        backend = request.backend or "-"
        if isinstance(error, ClientError):
            log.info("bad request from %s: %s %s", environ.get("REMOTE_ADDR", "-"),
                     error.status, error.detail)
            if error.server_error is not None:
                raise error.server_error
        elif isinstance(error, UpstreamError):
            log.warning("upstream error: backend=%s kind=%s status=%s cause=%s",
                        backend, error.kind, error.status, error.detail)
        elif error.status == 503:
            log.warning("no backend available: %s", error.detail)
        # A rate limit's 429 has its access line (limited=rate) and no other: a flood of
        # refusals must not write two lines each.
        # The body names the route and request ID; a backend and its failure only where
        # the operator said clients may see them (the log has them always).
        status_line, headers, body = error_response(
            error, close=isinstance(error, ClientError), route=request.route,
            request_id=request.id, detail=request.runtime.config.expose_backends,
            backend=request.backend)
        start_response(status_line, headers)
        return [body] if environ["REQUEST_METHOD"] != "HEAD" else []


class _Trip(NamedTuple):
    """What every attempt of one request shares: its environ and ``Request``, the route's
    pool, the method and target (the route's rewrite done), the body, whether it asks to
    switch protocols, and the client watch."""

    environ: dict
    request: Request
    pool: Pool
    method: str
    target: str
    body: RequestBody
    upgrade: str
    watch: ClientWatch | None


class ResponseBody:
    """Streams an upstream response body to the client, chunk by chunk.

    If the backend fails mid-body, the error propagates to the server, which closes the
    client connection without a final chunk: a truncated body must never look complete.
    What it yields is counted in ``Request.sent`` (``counts_sent``), for the access line.
    """

    counts_sent = True

    def __init__(self, response, backend: Backend, request: Request,
                 release: Callable[[Backend], None], report: Callable | None = None,
                 watch: ClientWatch | None = None):
        self._response = response
        self._release = release   # frees the backend's slot when the body is done
        self._backend = backend
        self._request = request
        self._report = report     # called with (backend, error) when the backend fails
        self._watch = watch       # the client, watched while a read waits on the backend
        self._complete = False
        self._closed = False
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        self._started = True
        response = self._response
        # What came in with the head needs no wait, so no watch; reading it touches no
        # socket. A small body is usually all there: then it is one piece, and done.
        first = response.read_buffered(RESPONSE_CHUNK)
        if response.complete:
            self._complete = True
            self._request.sent += len(first)
            return iter((first,) if first else ())
        return self._stream(first)

    def _stream(self, first: bytes) -> Iterator[bytes]:
        response = self._response
        read, buffered = response.read1, response.read_buffered
        watch = self._watch
        request = self._request
        data = first
        try:
            while True:
                if data:
                    request.sent += len(data)
                    yield data
                data = buffered(RESPONSE_CHUNK)
                if data:
                    continue
                if response.complete:
                    break
                if watch is None:
                    data = read(RESPONSE_CHUNK)
                else:
                    watch.waiting()
                    try:
                        data = read(RESPONSE_CHUNK)
                    finally:
                        watch.done_waiting()
                if not data:
                    break
        except ClientAborted:
            # The client has gone: the backend's connection is closed (close() below),
            # and the server closes the client's, quietly, as for any reset.
            self._request.client_aborted = True
            raise ConnectionResetError(errno.ECONNRESET, "the client closed its connection") \
                from None
        except Exception as error:  # noqa: BLE001 - typed, logged, re-raised
            failure = classify(error)
            if not isinstance(failure, UpstreamError):
                failure = UpstreamReset(str(error))
            self._request.error = failure
            log.warning("upstream error mid-body: backend=%s kind=%s cause=%s",
                        self._backend.url, failure.kind, failure.detail)
            if self._report is not None:
                self._report(self._backend, failure)
            raise failure from error
        self._complete = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            watch = self._watch
            if not self._complete and self._started and watch is not None and \
                    self._request.error is None and watch.client_gone():
                # The server stopped writing part way because the client had left.
                self._request.client_aborted = True
            _finish(self._response, self._backend, self._release, self._complete, watch)


def route_of(request: Request, environ: dict, target: str) -> Pool:
    """The pool of the request's route (``Request.route`` names it); ``NoRouteMatched`` if
    none."""
    table = request.runtime.table
    if table.empty:
        pool = table.default
    else:
        path = target.partition("?")[0]
        pool = table.match(request_host(environ.get("HTTP_HOST", "")), path)
        if pool is None:
            raise NoRouteMatched(environ.get("HTTP_HOST", ""), path)
    request.route = pool.name
    return pool


def limit_rate(pool: Pool, request: Request, environ: dict) -> None:
    """Count the request against its pool's rate limit; ``RateLimited`` when over it.

    The key: ``route``, the pool as a whole; ``client_ip``, the client's address after
    ``forwarded.trusted_proxies`` (``affinity.client_address``, as the hash policy takes
    it); ``header:NAME``, its value (requests without one share one key)."""
    spec = pool.limit_key
    key = "" if spec == "route" else \
        request_key(environ, spec, request.runtime.config.forwarded) or ""
    wait = pool.limit.check(key)
    if wait:
        request.limited = "rate"
        raise RateLimited(retry_after(wait))


def _report(pool: Pool, backend: Backend, error: UpstreamError | None) -> None:
    """Feed passive health with one attempt's outcome; log an ejection or a return."""
    failure = f"{error.kind}: {error.detail}" if error is not None else None
    rules = pool.settings.passive_health
    transition = pool.balancer.record_request(backend, failure, rules)
    if transition == "ejected":
        log.warning(Fields("backend ejected", backend=backend.url, route=pool.name,
                           eject_for_s=rules.eject_for, cause=failure))
    elif transition == "up":
        log.info(Fields("backend up", backend=backend.url, route=pool.name,
                        after="a request succeeded"))


def _outbound_headers(environ: dict, request: Request, backend: Backend, forwarded,
                      length: int | None = None, sticky: str | None = None
                      ) -> list[tuple[str, str]]:
    """The client's headers less hop-by-hop ones, plus X-Forwarded-*, Via, X-Request-ID,
    as ``(name, value)`` lines in order (a repeated name stays separate lines). ``sticky``
    is the pool's sticky cookie name: that cookie is the proxy's, removed from ``Cookie``
    (HAProxy's ``indirect``), every other cookie kept byte for byte.

    The framing is the proxy's own: ``Content-Length`` is ``length``, the one the server
    parsed, in the place of the client's line (or last, if it had none), whatever
    ``Connection`` names; a chunked body's ``Transfer-Encoding`` is the upstream writer's.
    """
    headers = []
    incoming = environ.get("myproxy.headers") or headers_from_environ(environ)
    # Every Connection line, joined; never Content-Length or Host (http1.NEVER_HOP_BY_HOP).
    connection = environ.get("HTTP_CONNECTION")
    dropped = hop_by_hop(list_tokens(connection)) if connection else ()
    client = environ.get("REMOTE_ADDR", "")
    request_id = request.id
    trusted = bool(forwarded.trusted_proxies) and forwarded.trusts(client)
    preserve_host = forwarded.preserve_host
    forwarded_for = ""
    has_proto = has_host = has_forwarded_host = False
    for name, value in incoming:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in NOT_FORWARDED or lower in dropped:
            continue
        if lower == "content-length":
            if length is not None:
                headers.append((name, str(length)))
                length = None           # exactly one
            continue
        if "_" in name:
            # X_Forwarded_For reads as X-Forwarded-For to CGI-style servers: dropped,
            # as nginx (underscores_in_headers off) and gunicorn (header_map) do.
            continue
        if lower.startswith("x-forwarded-") or lower == "x-request-id":
            if not trusted:
                continue            # an untrusted client cannot spoof these
            if lower == "x-forwarded-for":
                forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
                continue
            if lower == "x-request-id" and request_id:
                continue            # the middleware's request ID replaces it
            has_proto = has_proto or lower == "x-forwarded-proto"
            has_forwarded_host = has_forwarded_host or lower == "x-forwarded-host"
        elif lower == "host":
            if not preserve_host:
                continue
            has_host = True
        elif sticky is not None and lower == "cookie":
            value = without_cookie(value, sticky)
            if not value:
                continue                # it held the sticky cookie only
        headers.append((name, value))
    if length is not None:
        headers.append(("Content-Length", str(length)))
    headers.append(("X-Forwarded-For", f"{forwarded_for}, {client}" if forwarded_for else client))
    if not has_proto:
        headers.append(("X-Forwarded-Proto", environ.get("wsgi.url_scheme", "http")))
    if not has_forwarded_host:
        host = environ.get("HTTP_HOST")
        if host:
            headers.append(("X-Forwarded-Host", host))
    if not has_host:
        headers.append(("Host", backend.netloc))
    if request_id:
        headers.append(("X-Request-ID", request_id))
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1"
    headers.append(("Via", f"{protocol} {VIA_NAME}"))
    return headers


def _choose(trip: _Trip, key: str | None) -> Backend:
    """The first backend for a request, its slot taken (``Capacity``): the one its sticky
    cookie names when that one may take it (``Balancer.takes_sticky``, and a slot on it now
    or after a wait in the queue: ``Capacity.acquire_bound``), else the policy's choice;
    the request's ``sticky`` says which (``app.lb.sticky``)."""
    pool, request = trip.pool, trip.request
    capacity, sticky = pool.capacity, pool.sticky
    pool.budget.record_request()        # once per request: what its retries are a share of
    if sticky is not None:
        bound = sticky.bound(trip.environ.get("HTTP_COOKIE"), pool.balancer.backends)
        if bound is not None and pool.balancer.takes_sticky(bound):
            taken = capacity.acquire_bound(bound, key, trip.watch, request)
            if taken is not None:
                request.sticky = HIT
                return taken
        request.sticky = NEW if bound is None else REBALANCED
    return capacity.acquire(key, (), trip.watch, request)


def _sticky_cookie(environ: dict, request: Request, pool: Pool,
                   backend: Backend) -> tuple[str, str] | None:
    """The ``Set-Cookie`` line that binds the client to the backend that answered, unless
    its cookie already did (a hit) or the pool has no sticky cookie."""
    if request.sticky is None or request.sticky == HIT:
        return None
    return ("Set-Cookie", pool.sticky.set_cookie(backend, environ,
                                                 request.runtime.config.forwarded))


def _adding(start_response: Callable, header: tuple[str, str]) -> Callable:
    """``start_response`` with ``header`` added to the response's own list: a tunnel's
    ``101`` head is written from that list (``Tunnels.relay``)."""
    def start(status: str, headers: list, exc_info=None):
        headers.append(header)
        return start_response(status, headers, exc_info)
    return start


def _finish(response, backend: Backend, release: Callable[[Backend], None],
            complete: bool, watch: ClientWatch | None = None) -> None:
    """Drop the backend connection unless the body was read to the end (it went back to
    its pool then); free the backend's slot (``release``: the pool's
    ``Capacity.release``, the one place a backend's in-flight count goes down)."""
    release(backend)
    if watch is not None:
        watch.close()
    if not complete:
        response.close()


class _ClientGone:
    """The body of a request whose client left before its response began: iterating it
    raises a reset, so the server writes nothing and closes the connection quietly."""

    def __iter__(self):
        raise ConnectionResetError(errno.ECONNRESET, "the client closed its connection")


def _client_aborted(request: Request, start_response: Callable):
    """The client left while its backend was still to answer: the backend request was
    abandoned (its connection closed); the access log and metrics say 499, as nginx does."""
    request.client_aborted = True
    start_response(f"{CLIENT_CLOSED_REQUEST} Client Closed Request",
                   [("Content-Length", "0"), ("Connection", "close")])
    return _ClientGone()


def headers_from_environ(environ: dict) -> list[tuple[str, str]]:
    """Request headers rebuilt from CGI-style environ keys (gunicorn, webtest)."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").title(), value))
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        headers.append(("Content-Length", environ["CONTENT_LENGTH"]))
    return headers


def response_headers(upstream_headers, body_follows: bool = False,
                     length: int | None = None, dropped=None) -> list[tuple[str, str]]:
    """The backend's headers less hop-by-hop ones, each repeated line kept separate.

    When a body follows, ``Content-Length`` is the ``length`` the body was framed by, once;
    it is dropped when there is none (a chunked body: RFC 9112 §6.3 says a proxy removes a
    Content-Length that Transfer-Encoding overrides), and the server frames the body itself.
    ``dropped``: the lower-cased names ``Connection`` lists, when the caller has them.
    """
    pairs = upstream_headers if isinstance(upstream_headers, list) else \
        list(upstream_headers.iteritems())
    # Never the backend's own framing (http1.NEVER_HOP_BY_HOP): the client must read the
    # body as the backend framed it.
    if dropped is None:
        dropped = connection_tokens(pairs)
    if dropped:
        dropped = hop_by_hop(dropped)
    headers, length_sent = [], False
    for name, value in pairs:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in dropped:
            continue
        if lower == "content-length" and body_follows:
            if length is None or length_sent:
                continue
            value, length_sent = str(length), True
        headers.append((name, value))
    return headers


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
