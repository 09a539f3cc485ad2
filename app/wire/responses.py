"""What a WSGI response owes the server that sends it, for every wrapper of one; and the
one way an error the proxy answers itself is rendered.

It knows nothing of proxying; both servers and every middleware may import it.
"""
from __future__ import annotations

from . import http1


def close_body(body) -> None:
    """Close a WSGI response iterable, as PEP 3333 requires of whoever wraps it."""
    close = getattr(body, "close", None)
    if close is not None:
        close()


def error_response(error, close: bool = False, **context) -> tuple[str, list[tuple[str, str]], bytes]:
    """The one rendering of an answer the proxy gives itself for a typed error
    (``errors.ProxyError``: a refused request, a failed backend, no backend): its status
    line, its header fields (``Connection: close`` when ``close``), and its short
    plain-text body (``context``: the request's ``route``, ``request_id``, and whether the
    body may give the failure's ``detail`` and ``backend``, as ``ProxyError.body`` takes
    them). The proxy, the server's handler and the connection all answer so."""
    body = error.body(**context)
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               *error.headers()]
    if close:
        headers.append(("Connection", "close"))
    return error.status_line, headers, body


def render_head(status_line: str, headers) -> bytes:
    """A response head as the bytes that go on the wire, for a server writing it itself
    (``http1.render_head`` with an HTTP/1.1 status line)."""
    return http1.render_head(f"HTTP/1.1 {status_line}", headers)
