"""The key a request is hashed on under ``policy: hash`` (the ``hash_key`` setting).

``client_ip`` (the client's address; behind a trusted proxy, the nearest untrusted
address in ``X-Forwarded-For``), ``header:NAME``, ``cookie:NAME``, or ``path`` (the
request target without its query). None when the request has no such value: the
balancer then goes round-robin. It reads the WSGI environ and knows nothing else.
"""
from __future__ import annotations

from ..config import ForwardedConfig


def request_key(environ: dict, spec: str, forwarded: ForwardedConfig = ForwardedConfig()) -> str | None:
    """The value of ``spec`` for this request, or None."""
    if spec == "client_ip":
        return client_address(environ, forwarded)
    if spec == "path":
        target = environ.get("RAW_URI") or environ.get("PATH_INFO") or "/"
        return target.split("?", 1)[0]
    kind, _, name = spec.partition(":")
    if kind == "header":
        return environ.get("HTTP_" + name.upper().replace("-", "_")) or None
    if kind == "cookie":
        return cookie(environ.get("HTTP_COOKIE", ""), name)
    raise ValueError(f"unknown hash_key {spec!r}")


def client_address(environ: dict, forwarded: ForwardedConfig = ForwardedConfig()) -> str | None:
    """The client's address: the peer, or behind trusted proxies the last address in
    ``X-Forwarded-For`` that is not one of them."""
    address = environ.get("REMOTE_ADDR") or None
    if address is None or not forwarded.trusts(address):
        return address
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not forwarded.trusts(hop):
            return hop
    return hops[0] if hops else address


def cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (RFC 6265 §4.2.1), or None."""
    for pair in header.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            return value.strip('"') or None
    return None
