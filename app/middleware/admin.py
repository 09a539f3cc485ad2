"""The admin surface: health, status, metrics and the status page under ``admin.prefix``.

``Admin`` is the WSGI app of the paths under the prefix (``App`` sends them here, and every
other path to the proxy: ``App._dispatch``); nothing it answers is ever proxied::

    admin = Admin(status=status, metrics=metrics, draining=lambda: False)

| path        | answer                                                                   |
|-------------|--------------------------------------------------------------------------|
| ``/health`` | 200 ``ok``; 503 while draining or with no backend of any pool able to serve. Open. |
| ``/live``   | 200 ``alive`` whenever the process answers, draining or not, backends or not. Open. |
| ``/status`` | the JSON of ``status.Status``                                            |
| ``/metrics``| Prometheus text (OpenMetrics when the scraper asks for it)               |
| ``/``       | the live status page (``static/status.html``), which polls ``/status``   |
| ``/api/...``| the runtime admin API (``api.AdminApi``): backends' admin states, reload |

``/health`` is readiness (send traffic here now?), for a balancer or a readiness probe;
``/live`` is liveness (is the process serving at all?), for a liveness probe or Docker's
``HEALTHCHECK``, which must not restart a proxy for its backends' outage or its drain.

Access: everything but ``/health`` and ``/live`` needs the token when ``admin.token`` is set, as
``Authorization: Bearer TOKEN`` (or HTTP Basic with the token as password, which is how a
browser on a phone can send it), compared in constant time; without a token, only
loopback clients are answered. Others get 401 or 403 and a body that says nothing about
the backends. It marks admin requests (``Request.admin``) so they are not counted as
proxied traffic, and knows nothing of how requests are proxied. The prefix and the token
are the request's runtime's (``app.request.Request.runtime``), so a reload can change them.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import re
from typing import Callable

from .metrics import Metrics
from ..request import KEY as REQUEST
from .status import Status

PAGE_PATH = os.path.join(os.path.dirname(__file__), "static", "status.html")
REALM = "myproxy"
ALLOWED_METHODS = ("GET", "HEAD")
OPEN = frozenset({"/health", "/live"})    # answered to anyone: probes carry no token
# The page is self-contained: it may load nothing from anywhere, and talk only to us.
CSP = ("default-src 'none'; {inline}; connect-src 'self'; img-src data:; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")


class Admin:
    """Answers the admin paths (a path under ``admin.prefix``)."""

    def __init__(self, status: Status, metrics: Metrics,
                 draining: Callable[[], bool] = lambda: False, page_path: str = PAGE_PATH,
                 api: Callable | None = None):
        self.api = api            # api.AdminApi: (environ, route) -> status, headers, body
        self.status = status
        self.metrics = metrics
        self.draining = draining
        with open(page_path, "rb") as handle:
            self._page = handle.read()
        self._page_csp = CSP.format(inline=_inline_hashes(self._page))
        self._routes = {"/health": self.health, "/live": self.live, "/status": self.status_json,
                        "/metrics": self.metrics_text, "": self.page, "/": self.page}

    def __call__(self, environ: dict, start_response: Callable):
        path = environ.get("PATH_INFO", "")
        request = environ[REQUEST]
        request.admin = True
        route = path[len(request.runtime.config.admin.prefix):]
        if len(route) > 1:
            route = route.rstrip("/")
        handler = self._routes.get(route)
        if route not in OPEN:
            refusal = self.refuse(environ)
            if refusal is not None:
                return _respond(environ, start_response, *refusal)
        if self.api is not None and (route == "/api" or route.startswith("/api/")):
            return _respond(environ, start_response, *self.api(environ, route))
        if handler is None:
            return _respond(environ, start_response, "404 Not Found", _TEXT, b"no such admin page\n")
        if environ["REQUEST_METHOD"] not in ALLOWED_METHODS:
            return _respond(environ, start_response, "405 Method Not Allowed",
                            [*_TEXT, ("Allow", ", ".join(ALLOWED_METHODS))], b"use GET or HEAD\n")
        return _respond(environ, start_response, *handler(environ))

    # --- access ----------------------------------------------------------------------------

    def refuse(self, environ: dict):
        """None if the client may see admin pages; else the 401 or 403 to answer."""
        token = environ[REQUEST].runtime.config.admin.token.encode("utf-8")
        if token:
            if _token_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
                return None
            return ("401 Unauthorized",
                    [*_TEXT, ("WWW-Authenticate", f'Bearer realm="{REALM}"'),
                     ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')],
                    b"the admin pages need the admin token\n")
        if is_loopback(environ.get("REMOTE_ADDR", "")):
            return None
        return ("403 Forbidden", _TEXT,
                b"the admin pages answer loopback clients only while no admin token is set\n")

    # --- pages -----------------------------------------------------------------------------

    def health(self, environ: dict):
        if self.draining():
            return "503 Service Unavailable", _TEXT, b"draining\n"
        if not any(backend.available for pool in environ[REQUEST].runtime.pools
                   for backend in pool.backends):
            return "503 Service Unavailable", _TEXT, b"no healthy backend\n"
        return "200 OK", _TEXT, b"ok\n"

    def live(self, environ: dict):
        return "200 OK", _TEXT, b"alive\n"

    def status_json(self, environ: dict):
        body = json.dumps(self.status.document(environ[REQUEST].runtime),
                          separators=(",", ":")).encode()
        return "200 OK", [("Content-Type", "application/json")], body

    def metrics_text(self, environ: dict):
        body, content_type = self.metrics.exposition(environ.get("HTTP_ACCEPT", ""))
        return "200 OK", [("Content-Type", content_type)], body

    def page(self, environ: dict):
        return "200 OK", [("Content-Type", "text/html; charset=utf-8"),
                          ("Content-Security-Policy", self._page_csp)], self._page


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def _token_matches(header: str, token: bytes) -> bool:
    """Whether ``Authorization`` carries ``token``: as a bearer token, or as the password of
    HTTP Basic (any user name). Compared in constant time."""
    scheme, _, credentials = header.strip().partition(" ")
    scheme = scheme.lower()
    supplied = b""
    if scheme == "bearer":
        supplied = credentials.strip().encode("utf-8")
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        supplied = decoded.partition(b":")[2]
    return hmac.compare_digest(supplied, token)


def _respond(environ: dict, start_response: Callable, status: str, headers: list, body: bytes):
    start_response(status, [*headers, ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
    return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _inline_hashes(page: bytes) -> str:
    """CSP sources allowing exactly the page's own inline script and style, by hash."""
    def hashes(tag: str) -> str:
        found = re.findall(rb"<" + tag.encode() + rb">(.*?)</" + tag.encode() + rb">", page, re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(text).digest()).decode() + "'"
                        for text in found) or "'none'"
    return f"script-src {hashes('script')}; style-src {hashes('style')}"
