"""The WSGI proxy callable: request in, upstream through the session's pools, response out.

``Proxy.__call__`` reads top to bottom like Go's ``ReverseProxy.ServeHTTP``: choose a
backend, build the outbound request, send, copy status and headers back, stream the body.
Sending is ``_send``: a small loop that tries another backend when ``retry.may_retry``
allows it, the budget has room and attempts are left; no retry happens once anything went
back to the client. Every failure leaves through ``_fail``, which turns a typed error into
one response. Each attempt's outcome feeds the backend's passive health.

Other layers talk to it through namespaced environ keys: the server puts the raw request
target in ``RAW_URI`` and the header lines as received in ``myproxy.headers``; the proxy
leaves ``myproxy.backend``, ``myproxy.attempts``, ``myproxy.tried`` (a ``(url, failure)`` pair
per attempt: the error kind, ``"stale"`` for a keep-alive reconnect, None for the answer)
and ``myproxy.error`` for the logging middleware. It knows nothing about sockets, signals or logging formats.
"""
from __future__ import annotations

import http
import logging
from typing import Callable, Iterator
from urllib.parse import quote

from urllib3 import HTTPHeaderDict

from .affinity import request_key
from .balancer import Backend, Balancer
from .config import Config
from .errors import NoBackendAvailable, ProxyError, UpstreamError, UpstreamReset
from .retry import ReplayableBody, RetryBudget, may_retry
from .upstream import Upstream, classify

log = logging.getLogger("myproxy.proxy")

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward, either way.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})

# RFC 9110 §6.4.1 / §15.3.5 / §15.4.5: responses that never carry content.
NO_BODY_STATUSES = frozenset({204, 304})

VIA = "1.1 myproxy"          # RFC 9110 §7.6.3
CHUNK_SIZE = 64 * 1024       # bytes read per body read, either direction


class Proxy:
    """The WSGI application that forwards each request to a backend."""

    def __init__(self, config: Config, balancer: Balancer, upstream: Upstream,
                 budget: RetryBudget | None = None):
        self.config = config
        self.balancer = balancer
        self.upstream = upstream
        self.budget = budget or RetryBudget(config.retries.budget)

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        method = environ["REQUEST_METHOD"]
        try:
            target = request_target(environ)
            body = ReplayableBody(*request_body(environ))
            backend, response = self._send(environ, method, target, body)
        except ProxyError as error:
            return self._fail(environ, start_response, error)

        status = response.status
        start_response(f"{status} {response.reason or _reason(status)}",
                       response_headers(response.headers))
        if method == "HEAD" or status in NO_BODY_STATUSES or status < 200:
            _finish(response, backend, complete=True)
            return iter(())
        return ResponseBody(response, backend, environ, report=self._report)

    def _send(self, environ: dict, method: str, target: str, body: ReplayableBody):
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
                return backend, self._attempt(environ, backend, method, target, body, fresh)
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
                if not self.budget.try_spend():
                    log.warning("retry budget spent: not retrying %s after %s from %s",
                                method, error.kind, tried[-1].url)
                    raise

    def _attempt(self, environ: dict, backend: Backend, method: str, target: str,
                 body: ReplayableBody, fresh: bool):
        """One try on one backend, counted in flight and fed to its passive health."""
        environ["myproxy.backend"] = backend.url
        attempts = environ.setdefault("myproxy.tried", [])
        attempts.append((backend.url, None))
        environ["myproxy.attempts"] = len(attempts)
        headers = self._outbound_headers(environ, backend)
        backend.in_flight += 1
        backend.requests += 1
        try:
            response = self.upstream.send(backend.origin, method, backend.prefix + target,
                                          headers, body.attempt(), body.chunked, fresh=fresh)
        except BaseException as error:
            backend.in_flight -= 1
            if isinstance(error, UpstreamError):
                attempts[-1] = (backend.url, "stale" if error.stale else error.kind)
                if not (error.stale or body.client_failed):
                    self._report(backend, error)
            raise
        self._report(backend, None)
        return response

    def _report(self, backend: Backend, error: UpstreamError | None) -> None:
        """Feed passive health with one attempt's outcome; log an ejection or a return."""
        failure = f"{error.kind}: {error.detail}" if error is not None else None
        transition = self.balancer.record_request(backend, failure, self.config.passive_health)
        if transition == "ejected":
            log.warning("backend ejected: backend=%s for %.1fs cause=%s", backend.url,
                        self.config.passive_health.eject_for, failure)
        elif transition == "up":
            log.info("backend up: backend=%s after a successful request", backend.url)

    def _outbound_headers(self, environ: dict, backend: Backend) -> HTTPHeaderDict:
        """The client's headers less hop-by-hop ones, plus X-Forwarded-*, Via, X-Request-ID."""
        headers = HTTPHeaderDict()
        incoming = environ.get("myproxy.headers") or headers_from_environ(environ)
        dropped = connection_tokens(incoming)
        client = environ.get("REMOTE_ADDR", "")
        trusted = self.config.forwarded.trusts(client)
        forwarded_for = ""
        for name, value in incoming:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in dropped:
                continue
            if lower.startswith("x-forwarded-") or lower == "x-request-id":
                if not trusted:
                    continue            # an untrusted client cannot spoof these
                if lower == "x-forwarded-for":
                    forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
                    continue
            if lower == "host" and not self.config.forwarded.preserve_host:
                continue
            headers.add(name, value)
        headers["X-Forwarded-For"] = f"{forwarded_for}, {client}" if forwarded_for else client
        if not (trusted and "X-Forwarded-Proto" in headers):
            headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
        if not (trusted and "X-Forwarded-Host" in headers):
            host = environ.get("HTTP_HOST")
            if host:
                headers["X-Forwarded-Host"] = host
        if "Host" not in headers:
            headers["Host"] = backend.netloc
        request_id = environ.get("myproxy.request_id")
        if request_id:
            headers["X-Request-ID"] = request_id
        headers.add("Via", VIA)
        return headers

    def _fail(self, environ: dict, start_response: Callable, error: ProxyError):
        """The one exit for errors: log the cause, answer the error's status and text."""
        environ["myproxy.error"] = error
        backend = environ.get("myproxy.backend", "-")
        if isinstance(error, UpstreamError):
            log.warning("upstream error: backend=%s kind=%s status=%s cause=%s",
                        backend, error.kind, error.status, error.detail)
        elif error.status == 503:
            log.warning("no backend available: %s", error.detail)
        body = error.body()
        start_response(error.status_line, [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *error.headers(),
        ])
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
                data = read(CHUNK_SIZE)
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


def request_target(environ: dict) -> str:
    """The request target exactly as the client sent it (origin-form).

    pywsgi's ``PATH_INFO`` is percent-decoded (STACK-FACTS 18), so the server's handler
    and gunicorn both supply ``RAW_URI``; without it (webtest), rebuild it as best we can.
    """
    raw = environ.get("RAW_URI")
    if raw is None:
        raw = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/;=,+@:!$&'()*~")
        if environ.get("QUERY_STRING"):
            raw += "?" + environ["QUERY_STRING"]
    return raw or "/"


def request_body(environ: dict):
    """The body to send upstream and whether to send it chunked.

    A body with a ``Content-Length`` goes out with that length; a chunked body (already
    de-chunked by the server) goes out re-chunked; no body goes out as none.
    """
    length = environ.get("CONTENT_LENGTH")
    if length and length != "0":
        return _LimitedReader(environ["wsgi.input"], int(length)), False
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return _chunks(environ["wsgi.input"]), True
    return None, False


class _LimitedReader:
    """Reads exactly ``length`` bytes from the client, in bounded pieces."""

    def __init__(self, stream, length: int):
        self._stream = stream
        self.remaining = length

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        if self.remaining <= 0:
            return b""
        data = self._stream.read(min(size, self.remaining, CHUNK_SIZE))
        self.remaining -= len(data)
        return data


def _chunks(stream) -> Iterator[bytes]:
    while True:
        data = stream.read(CHUNK_SIZE)
        if not data:
            return
        yield data


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


def connection_tokens(headers) -> frozenset[str]:
    """Header names listed in ``Connection`` (RFC 9110 §7.6.1), lower-cased."""
    tokens = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(tokens)


def response_headers(upstream_headers: HTTPHeaderDict) -> list[tuple[str, str]]:
    """The backend's headers less hop-by-hop ones, each repeated line kept separate."""
    pairs = list(upstream_headers.iteritems())
    dropped = connection_tokens(pairs)
    return [(name, value) for name, value in pairs
            if name.lower() not in HOP_BY_HOP and name.lower() not in dropped]


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
