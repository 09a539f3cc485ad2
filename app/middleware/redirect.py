"""The answer of the plain-HTTP listener of ``tls.redirect_from``: ``308`` to the same URL over https.

``HTTPSRedirect`` wraps the app when ``tls.redirect_from`` is set. A request that came over
TLS passes through; one that came over plain HTTP (the redirect listener: under
``python wsgi.py`` a server of its own, under gunicorn a second bound address whose
connections ``app.server.tls.Terminator`` leaves plain) is answered
``308 Permanent Redirect`` (RFC 9110 §15.4.9: the method and body are kept, unlike 301)
to ``https://HOST[:port]TARGET``: the host the client asked for, without its port, then
``port`` unless it is 443, then the request target byte for byte. It never reaches a
backend, and the admin pages are redirected too. Its answers are logged as they are
(``Request.redirect``: not admin requests, not counted as proxied traffic). It knows
nothing of backends.
"""
from __future__ import annotations

from typing import Callable, Iterable

from ..server.tls import connection_tls
from ..request import KEY as REQUEST
from ..wire.http1 import host_name

PERMANENT_REDIRECT = "308 Permanent Redirect"    # RFC 9110 §15.4.9
HTTPS_PORT = 443                                   # RFC 9110 §4.2.2


class HTTPSRedirect:
    """Answers requests that did not come over TLS with a redirect to https (see above).

    Usage: ``app = HTTPSRedirect(app)``; the port it redirects to is the request's runtime's.
    """

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if connection_tls(environ) is not None:
            return self.app(environ, start_response)
        request = environ[REQUEST]
        request.redirect = True                  # logged, not counted as traffic
        host = host_name(environ.get("HTTP_HOST", ""))
        if not host:
            body = b"400 Bad Request: a redirect to https needs the request's Host\n"
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                               ("Content-Length", str(len(body))),
                                               ("Connection", "close")])
            return [body]
        port = request.runtime.config.port
        target = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        if target[:7].lower() == "http://":          # absolute-form: its path and query
            target = target[7:].partition("/")[1] + target[7:].partition("/")[2]
        if not target.startswith("/"):
            target = "/"
        location = f"https://{host}{'' if port == HTTPS_PORT else f':{port}'}{target}"
        body = f"308 Permanent Redirect: {location}\n".encode("latin-1", "replace")
        start_response(PERMANENT_REDIRECT, [("Location", location),
                                            ("Content-Type", "text/plain; charset=utf-8"),
                                            ("Content-Length", str(len(body)))])
        return [body]
