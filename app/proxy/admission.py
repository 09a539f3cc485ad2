"""Admission: whether a request may be forwarded at all, decided on the WSGI environ.

``admit(environ, limits)`` runs before a backend is chosen under a server that did not read
the head itself (gunicorn's stock worker, webtest); MyProxy's own server
(``app.server.handler``, under ``python wsgi.py`` and MyProxy's gunicorn worker) applies
the same ``http1`` rules as it reads the head, and says so with ``myproxy.head_checked``:

- The target is made origin-form (``http1.origin_form``): an absolute-form target keeps
  only its path and query and names the ``Host``; ``CONNECT`` is 405; anything else that
  is not a path is 400. So the proxy only ever connects to its configured backends.
- gunicorn's own parser has refused most ambiguous framing (STACK-FACTS 23); this covers
  what it lets through: a ``Transfer-Encoding`` other than a single ``chunked`` (gunicorn
  accepts ``gzip, chunked``), a missing or invalid ``Host``, and a head over
  ``limits.max_header_bytes``, measured from the environ (gunicorn keeps no raw bytes, so
  names and values count as ``name:value`` lines: never more than what was sent).

It leaves the checked target in ``RAW_URI``. It knows nothing of backends or sockets.
"""
from __future__ import annotations

from urllib.parse import quote

from ..wire import http1
from ..config import LimitsConfig
from ..errors import HeadersTooLarge


def admit(environ: dict, limits: LimitsConfig) -> str:
    """Check the request; return its origin-form target (also left in ``RAW_URI``)."""
    method = environ["REQUEST_METHOD"]
    target, host = http1.origin_form(method, request_target(environ))
    if not environ.get("myproxy.head_checked"):
        check_environ(environ, limits)
    environ["RAW_URI"] = target
    if host is not None:
        # RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host.
        environ["HTTP_HOST"] = host
        headers = environ.get("myproxy.headers")
        if headers is not None:
            environ["myproxy.headers"] = [(n, host if n.lower() == "host" else v)
                                          for n, v in headers]
    return target


def request_target(environ: dict) -> str:
    """The request target exactly as the client sent it.

    pywsgi's ``PATH_INFO`` is percent-decoded (STACK-FACTS 18), so the server's handler
    and gunicorn both supply ``RAW_URI``; without it (webtest), rebuild it as best we can.
    """
    raw = environ.get("RAW_URI")
    if raw is None:
        raw = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                    safe="/;=,+@:!$&'()*~")
        if environ.get("QUERY_STRING"):
            raw += "?" + environ["QUERY_STRING"]
    return raw or "/"


def check_environ(environ: dict, limits: LimitsConfig) -> None:
    """The framing and size rules for a head no strict parser has read (gunicorn's stock
    worker, webtest): ``http1``'s own rules, on the fields the environ still has."""
    fields = [(name, environ[key].strip()) for key, name in _FRAMING_KEYS
              if environ.get(key) is not None and (environ[key] or key != "CONTENT_LENGTH")]
    version = environ.get("SERVER_PROTOCOL", "")
    http1.body_framing(fields, version)
    http1.check_host(fields, version)
    if head_size(environ) > limits.max_header_bytes:
        raise HeadersTooLarge(f"the request head is over {limits.max_header_bytes} bytes")


# The environ keys of the fields the framing and Host rules read, and the fields' names.
_FRAMING_KEYS = (("CONTENT_LENGTH", "Content-Length"), ("HTTP_TRANSFER_ENCODING", "Transfer-Encoding"),
                 ("HTTP_HOST", "Host"))


def head_size(environ: dict) -> int:
    """The fewest bytes the request line and header lines can have taken on the wire."""
    size = len(environ["REQUEST_METHOD"]) + len(request_target(environ)) + 12   # SP SP HTTP/1.1 CRLF
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            size += len(key) - 5 + len(value) + 3                      # name:value CRLF
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            size += len(key) + len(value) + 3
    return size + 2                                                     # the empty line
