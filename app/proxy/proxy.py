"""The WSGI proxy callable: request in, upstream through the session's pools, response out.

``Proxy.__call__`` reads top to bottom like Go's ``ReverseProxy.ServeHTTP``: choose a
backend, build the outbound request, send, copy status and headers back, stream the body.
Sending is ``_send``: a small loop that tries another backend when ``retry.may_retry``
allows it, the budget has room and attempts are left; no retry happens once anything went
back to the client. Every failure leaves through ``_fail``, which turns a typed error into
one response. Each attempt's outcome feeds the backend's passive health. A request that
asks to switch protocols takes the same path with ``Tunnels.send`` in place of
``Upstream.send``; after a ``101``, ``Tunnels.relay`` carries the connection.

Before anything else, ``admission.admit`` decides whether the request may be forwarded
at all (origin-form target, framing, limits); the request body streams through
``body.RequestBody``. Other layers talk to it through namespaced environ keys: the server
puts the raw request target in ``RAW_URI`` and the header lines as received in
``myproxy.headers``; the proxy
leaves ``myproxy.backend``, ``myproxy.attempts``, ``myproxy.tried`` (a ``(url, failure)`` pair
per attempt: the error kind, ``"stale"`` for a keep-alive reconnect, None for the answer),
``myproxy.upstream_duration`` (seconds from sending the last attempt to its response
headers) and ``myproxy.error`` for the logging middleware and metrics. It knows nothing
about sockets, signals or logging formats.
"""
from __future__ import annotations

import http
import logging
import time
from typing import Callable, Iterator

from .admission import admit
from ..lb.affinity import request_key
from ..lb.balancer import Backend, Balancer
from .body import request_body
from ..config import Config, ConfigHolder
from ..errors import ClientError, NoBackendAvailable, ProxyError, UpstreamError, UpstreamReset
from ..server.http1 import connection_tokens, list_tokens, response_has_body
from ..server.responses import error_response
from ..logs import Fields
from ..lb.retry import ReplayableBody, RetryBudget, may_retry
from .tunnel import SWITCHING_PROTOCOLS, Tunnels, upgrade_requested
from .upstream import Upstream, classify

log = logging.getLogger("myproxy.proxy")

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward, either way.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})

# RFC 9110 §10.1.1: the proxy answers a client's 100-continue itself, when it starts
# reading the body, and streams the body right behind the headers upstream (as nginx does).
NOT_FORWARDED = frozenset({"expect"})

# RFC 9110 §6.4.1 / §15.3.5 / §15.4.5: responses that never carry content.

# Bytes asked of the backend per read of a response body: fewer, larger reads and writes
# move a large body with less CPU; a read returns what has arrived, never waits for more.
RESPONSE_CHUNK = 1024 * 1024

VIA_NAME = "myproxy"         # RFC 9110 §7.6.3: Via: <received protocol version> myproxy


class Proxy:
    """The WSGI application that forwards each request to a backend."""

    def __init__(self, settings: ConfigHolder, balancer: Balancer, upstream: Upstream,
                 budget: RetryBudget | None = None, tunnels: Tunnels | None = None):
        self.settings = settings
        self.balancer = balancer
        self.upstream = upstream
        self.budget = budget or RetryBudget(settings.config.retries.budget)
        self.tunnels = tunnels or Tunnels(settings)     # upgrades: WebSocket and others

    @property
    def config(self) -> Config:
        """The config in force (a reload replaces it)."""
        return self.settings.config

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        method = environ["REQUEST_METHOD"]
        try:
            target = admit(environ, self.config.limits)
            upgrade = upgrade_requested(environ)     # "" unless it asks to switch protocols
            source, chunked = request_body(environ, self.config.limits.max_body_bytes)
            if source is not None:
                source.prefetch()       # a body bad from its first byte reaches no backend
            body = ReplayableBody(source, chunked)
            backend, response = self._send(environ, method, target, body, upgrade)
        except ProxyError as error:
            return self._fail(environ, start_response, error)

        status = response.status
        if upgrade and status == SWITCHING_PROTOCOLS:
            try:
                return self.tunnels.relay(environ, start_response, response, backend.url)
            finally:
                backend.in_flight -= 1
        start_response(f"{status} {response.reason or _reason(status)}",
                       response_headers(response.header_lines, *_body_length(response, method),
                                        getattr(response, "connection_tokens", None)))
        if not response_has_body(method, status):
            _finish(response, backend, complete=True)
            return iter(())
        return ResponseBody(response, backend, environ, report=self._report)

    def _send(self, environ: dict, method: str, target: str, body: ReplayableBody,
              upgrade: str = ""):
        """Choose a backend and send; after a failure that may be retried, try another.

        A pooled keep-alive connection the backend had closed is not a failure: the same
        backend gets the request again at once, on a fresh connection. Returns
        ``(backend, response)`` with the response headers read, or raises the last error.
        """
        key = None
        if self.balancer.policy == "hash":
            key = request_key(environ, self.config.hash_key, self.config.forwarded)
        self.budget.record_request()
        tried: list[Backend] = []
        backend, fresh = self.balancer.choose(key), False
        while True:
            try:
                return backend, self._attempt(environ, backend, method, target, body, fresh,
                                              upgrade)
            except UpstreamError as error:
                fresh = error.stale and may_retry(error, method, body)
                if fresh:
                    continue        # a fresh connection is never stale: at most once each
                tried.append(backend)
                if len(tried) >= self.config.retries.attempts or not may_retry(error, method, body):
                    raise
                try:
                    backend = self.balancer.choose(key, exclude=tried)
                except NoBackendAvailable:
                    raise error from None
                if not self.budget.try_spend(self.config.retries.budget):
                    log.warning("retry budget spent: not retrying %s after %s from %s",
                                method, error.kind, tried[-1].url)
                    raise

    def _attempt(self, environ: dict, backend: Backend, method: str, target: str,
                 body: ReplayableBody, fresh: bool, upgrade: str = ""):
        """One try on one backend, counted in flight and fed to its passive health."""
        environ["myproxy.backend"] = backend.url
        attempts = environ.setdefault("myproxy.tried", [])
        attempts.append((backend.url, None))
        environ["myproxy.attempts"] = len(attempts)
        headers = self._outbound_headers(environ, backend)
        if upgrade:
            headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
        backend.in_flight += 1
        backend.requests += 1
        sent_at = time.monotonic()
        try:
            send = self.tunnels.send if upgrade else self.upstream.send
            response = send(backend.origin, method, _upstream_target(backend, target),
                            headers, body.attempt(), body.chunked, fresh=fresh)
        except BaseException as error:
            backend.in_flight -= 1
            if isinstance(error, UpstreamError):
                attempts[-1] = (backend.url, "stale" if error.stale else error.kind)
                if not (error.stale or body.client_failed):
                    self._report(backend, error)
            raise
        finally:
            environ["myproxy.upstream_duration"] = time.monotonic() - sent_at
        self._report(backend, None)
        return response

    def _report(self, backend: Backend, error: UpstreamError | None) -> None:
        """Feed passive health with one attempt's outcome; log an ejection or a return."""
        failure = f"{error.kind}: {error.detail}" if error is not None else None
        transition = self.balancer.record_request(backend, failure, self.config.passive_health)
        if transition == "ejected":
            log.warning(Fields("backend ejected", backend=backend.url,
                               eject_for_s=self.config.passive_health.eject_for, cause=failure))
        elif transition == "up":
            log.info(Fields("backend up", backend=backend.url, after="a request succeeded"))

    def _outbound_headers(self, environ: dict, backend: Backend) -> list[tuple[str, str]]:
        """The client's headers less hop-by-hop ones, plus X-Forwarded-*, Via, X-Request-ID,
        as ``(name, value)`` lines in order (a repeated name stays separate lines)."""
        headers = []
        incoming = environ.get("myproxy.headers") or headers_from_environ(environ)
        dropped = list_tokens(environ.get("HTTP_CONNECTION", ""))   # every line, joined
        client = environ.get("REMOTE_ADDR", "")
        request_id = environ.get("myproxy.request_id")
        forwarded = self.config.forwarded
        trusted = forwarded.trusts(client)
        preserve_host = forwarded.preserve_host
        forwarded_for = ""
        has_proto = has_host = has_forwarded_host = False
        for name, value in incoming:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in NOT_FORWARDED or lower in dropped:
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
            headers.append((name, value))
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

    def _fail(self, environ: dict, start_response: Callable, error: ProxyError):
        """The one exit for errors: log the cause, answer the error's status and text.

        A client's error closes the connection; one the WSGI server's own input raised goes
        back to that server, which answers and closes it its own way (gunicorn).
        """
        environ["myproxy.error"] = error
        backend = environ.get("myproxy.backend", "-")
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
        status_line, headers, body = error_response(error, close=isinstance(error, ClientError))
        start_response(status_line, headers)
        return [body] if environ["REQUEST_METHOD"] != "HEAD" else []


class ResponseBody:
    """Streams an upstream response body to the client, chunk by chunk.

    If the backend fails mid-body, the error propagates to the server, which closes the
    client connection without a final chunk: a truncated body must never look complete.
    """

    def __init__(self, response, backend: Backend, environ: dict,
                 report: Callable | None = None):
        self._response = response
        self._backend = backend
        self._environ = environ
        self._report = report     # called with (backend, error) when the backend fails
        self._complete = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        read = self._response.read1
        try:
            while True:
                data = read(RESPONSE_CHUNK)
                if not data:
                    break
                yield data
        except Exception as error:  # noqa: BLE001 - typed, logged, re-raised
            failure = classify(error)
            if not isinstance(failure, UpstreamError):
                failure = UpstreamReset(str(error))
            self._environ["myproxy.error"] = failure
            log.warning("upstream error mid-body: backend=%s kind=%s cause=%s",
                        self._backend.url, failure.kind, failure.detail)
            if self._report is not None:
                self._report(self._backend, failure)
            raise failure from error
        self._complete = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _finish(self._response, self._backend, self._complete)


def _finish(response, backend: Backend, complete: bool) -> None:
    """Return the connection to its pool if the body was read to the end, else drop it."""
    backend.in_flight -= 1
    if not complete:
        response.close()
    response.release_conn()


def _upstream_target(backend: Backend, target: str) -> str:
    """The target on the upstream request line: the backend's path prefix, then the
    client's target byte for byte (``*`` of ``OPTIONS *`` alone)."""
    return target if target == "*" else backend.prefix + target


def _body_length(response, method: str) -> tuple[bool, int | None]:
    """Whether a body follows, and its length as the response head framed it (None: read to the end)."""
    if not response_has_body(method, response.status):
        return False, None
    return True, response.length_remaining


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
    if dropped is None:
        dropped = connection_tokens(pairs)
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
