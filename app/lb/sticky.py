"""Sticky sessions (SPEC §8): the cookie that keeps a client on the backend that knows it.

``Sticky`` is one pool's, made from its ``sticky`` settings. It names each backend with an
id (``backend_id``): an HMAC-SHA256 of the backend's URL (for a DNS member, the URL with
the member's address), truncated and base64url-encoded, keyed by ``sticky.secret`` or, when
that is unset, by a built-in key. The id reveals nothing of the address and is the same in
every worker, every instance with the same config, and across restarts and reloads, so
nothing is shared. ``bound`` finds the backend a request's cookie names among the pool's
members with one dict lookup (the index is rebuilt when the member list changes: a reload,
a DNS answer); a forged or stale value finds nothing. ``set_cookie`` is the ``Set-Cookie``
value for a backend, ``without_cookie`` a ``Cookie`` line with the sticky cookie removed
and every other byte kept.

Whether the backend found may take the request is the balancer's
(``Balancer.takes_sticky``). This module does no I/O; it reads the WSGI environ for the
scheme only, and imports nothing of the app but the config.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
from typing import Sequence

from ..config import ForwardedConfig, StickyConfig

# The key of the ids when ``sticky.secret`` is unset: ids are then still opaque, but anyone
# who knows a backend's URL and this key could tell which backend an id names.
DEFAULT_KEY = b"myproxy sticky v1"
ID_BYTES = 12            # 96 bits of the HMAC: 16 base64url characters

# What a request's cookie did, for the access line (``sticky=``) and the metric.
HIT = "hit"                  # it named a backend that took the request
NEW = "new"                  # none, or one naming no backend of the pool (forged, stale, gone)
REBALANCED = "rebalanced"    # its backend could not take it (down, maint, ...) or failed


class Sticky:
    """One pool's sticky cookie: ids, the lookup of a request's backend, the Set-Cookie."""

    def __init__(self, settings: StickyConfig):
        self.name = settings.cookie
        self._key = settings.secret.encode() or DEFAULT_KEY
        self._secure = settings.secure
        attributes = [f"Path={settings.path}"]
        if settings.max_age > 0:
            attributes.append(f"Max-Age={math.ceil(settings.max_age)}")
        self._attributes = "; " + "; ".join(attributes)
        self._flags = ("; HttpOnly" if settings.http_only else "") + \
            f"; SameSite={settings.same_site.capitalize()}"
        self._members: Sequence | None = None     # the member list the index was built from
        self._by_id: dict = {}
        self._ids: dict = {}                      # backend -> id, for the Set-Cookie

    def backend_id(self, backend) -> str:
        """The cookie value that names ``backend`` (see the module docstring)."""
        known = self._ids.get(backend)
        if known is not None:
            return known
        digest = hmac.new(self._key, backend.url.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:ID_BYTES]).decode("ascii")

    def bound(self, cookie_header: str | None, backends: Sequence) -> object | None:
        """The backend of ``backends`` (the pool's members now) that the request's sticky
        cookie names, or None. ``cookie_header`` is the request's ``Cookie`` (several
        lines joined with "," by the WSGI server)."""
        if not cookie_header or self.name not in cookie_header:
            return None
        if self._members is not backends:
            self._index(backends)
        by_id = self._by_id
        for value in cookie_values(cookie_header, self.name):
            backend = by_id.get(value)
            if backend is not None:
                return backend
        return None

    def set_cookie(self, backend, environ: dict, forwarded: ForwardedConfig) -> str:
        """The ``Set-Cookie`` value that binds the client to ``backend``."""
        secure = self._secure == "true" or (self._secure == "auto"
                                            and client_tls(environ, forwarded))
        return (f"{self.name}={self.backend_id(backend)}{self._attributes}"
                f"{'; Secure' if secure else ''}{self._flags}")

    def _index(self, backends: Sequence) -> None:
        """Rebuild the id lookup for a new member list (the list object is the version:
        the balancer replaces it whole on every change, never edits it)."""
        self._ids = {}
        self._ids = {backend: self.backend_id(backend) for backend in backends}
        self._by_id = {value: backend for backend, value in self._ids.items()}
        self._members = backends


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a ``Cookie`` header, in order. Pairs are split
    at ";" (RFC 6265 §4.2.1) and at "," (how WSGI servers join repeated lines; no cookie
    value of RFC 6265 §4.1.1 holds one)."""
    values = []
    prefix = name + "="
    for piece in header.split(";"):
        if prefix not in piece:
            continue
        # Nearly always one pair: split at "," only when there is one (a hot path).
        for pair in piece.split(",") if "," in piece else (piece,):
            pair = pair.strip(" \t")
            if pair.startswith(prefix):
                values.append(pair[len(prefix):].strip('"'))
    return values


def without_cookie(line: str, name: str) -> str:
    """A ``Cookie`` line without cookie ``name``: every other pair kept byte for byte, in
    order, with its separators; "" when nothing is left (then the line goes)."""
    prefix = name + "="
    if prefix not in line:
        return line
    kept, changed = [], False
    for piece in line.split(";"):
        if prefix in piece:
            if "," not in piece:            # one pair, nearly always: no list to build
                if piece.lstrip(" \t").startswith(prefix):
                    changed = True
                    continue
                kept.append(piece)
                continue
            pairs = piece.split(",")
            others = [pair for pair in pairs if not pair.lstrip(" \t").startswith(prefix)]
            if len(others) != len(pairs):
                changed = True
                if not others:
                    continue
                lead = piece[:len(piece) - len(piece.lstrip(" \t"))]
                piece = lead + ",".join(others).lstrip(" \t")
        kept.append(piece)
    if not changed:
        return line
    return ";".join(kept).lstrip(" \t")


def client_tls(environ: dict, forwarded: ForwardedConfig) -> bool:
    """Whether the client came over TLS: to this proxy, or to a trusted proxy in front that
    says so in ``X-Forwarded-Proto`` (a PaaS router that terminates TLS)."""
    if environ.get("wsgi.url_scheme") == "https":
        return True
    proto = environ.get("HTTP_X_FORWARDED_PROTO")
    return proto is not None and proto.strip().lower() == "https" and \
        forwarded.trusts(environ.get("REMOTE_ADDR", ""))
