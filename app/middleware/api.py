"""The runtime admin API (SPEC §9): JSON under ``{admin.prefix}/api``.

| method and path         | answer                                                          |
|-------------------------|-----------------------------------------------------------------|
| ``GET /api/backends``   | every backend of every pool: route, backend, state, admin state, weights, in flight |
| ``PATCH /api/backends`` | ``{"route", "backend", "state", "weight"}``: the backend's new entry |
| ``POST /api/reload``    | re-reads the config file as SIGHUP does: what changed, or the error |

``Admin`` hands it the requests under ``/api`` once the admin pages' protection (token,
or loopback only) let them through. It adds the refusal of what a browser could send
from another site (``cross_site``): a web page must not be able to drain a loopback-only
admin. Errors are JSON too: ``{"error": "..."}``, with ``field`` on a 400 for a bad field.

Every change is logged with the client's address and counted
(``myproxy_admin_changes_total{action}``). The rules of admin states are
``app.lb.overrides``' (through ``App.admin_states``); a reload is ``App.reload_from_file``,
the SIGHUP path, and under a gunicorn group the other workers are then sent SIGHUP
(``GroupView.reload_others``) so that the whole group runs the same config.
"""
from __future__ import annotations

import ipaddress
import json
import logging

from ..config import DEFAULT_ROUTE, ConfigError
from ..lb.overrides import KEEP, BadField, StoreUnavailable, UnknownTarget
from ..logs import Fields
from ..request import KEY as REQUEST

log = logging.getLogger("myproxy.admin")

JSON = "application/json"
MAX_BODY = 64 * 1024          # a change is a few dozen bytes
METHODS = {"/api/backends": ("GET", "HEAD", "PATCH"), "/api/reload": ("POST",)}
SAFE_METHODS = ("GET", "HEAD")
PATCH_FIELDS = ("route", "backend", "state", "weight")
DEFAULT_PORTS = {"http": "80", "https": "443"}


class AdminApi:
    """Answers ``/api/...`` for ``app`` (the ``App``: its ``admin_states``,
    ``reload_from_file`` and ``group``), counting changes in ``metrics``."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics

    def __call__(self, environ: dict, route: str) -> tuple[str, list, bytes]:
        """``route``: the path under the admin prefix. Returns status, headers and body."""
        methods = METHODS.get(route)
        if methods is None:
            return _error("404 Not Found", "no such admin API path")
        refusal = cross_site(environ)
        if refusal:
            return _error("403 Forbidden", refusal)
        method = environ["REQUEST_METHOD"]
        if method not in methods:
            status, headers, body = _error("405 Method Not Allowed", f"use {' or '.join(methods)}")
            return status, [*headers, ("Allow", ", ".join(methods))], body
        if route == "/api/reload":
            return self.reload(environ)
        if method == "PATCH":
            return self.patch(environ)
        return _answer("200 OK", {"backends": [
            self.entry(pool, backend) for pool in environ[REQUEST].runtime.pools
            for backend in pool.backends]})

    def patch(self, environ: dict):
        try:
            change = _read_json(environ)
            pool, url, state, weight = _patch_fields(change, environ[REQUEST].runtime)
            backend, before, after = self.app.admin_states.change(
                environ[REQUEST].runtime.balancers, pool, url, state, weight)
        except BadField as error:
            return _error("400 Bad Request", str(error), field=error.field)
        except UnknownTarget as error:
            return _error("404 Not Found", str(error))
        except StoreUnavailable:
            return _error("503 Service Unavailable", "the cluster's Redis is unreachable: a "
                          "change made here only would not hold in the other instances; "
                          "try again when myproxy_cluster_up is 1")
        client = environ.get("REMOTE_ADDR", "-")
        if after.state != before.state:
            self.metrics.admin_changed(after.state)
            log.info(Fields("admin change", action=after.state, route=pool, backend=url,
                            state=f"{before.state}->{after.state}", client=client))
        if after.weight != before.weight:
            self.metrics.admin_changed("weight")
            log.info(Fields("admin change", action="weight", route=pool, backend=url,
                            weight=f"{_weight(before.weight)}->{_weight(after.weight)}",
                            client=client))
        return _answer("200 OK", self.entry(environ[REQUEST].runtime.pool(pool), backend))

    def reload(self, environ: dict):
        log.info(Fields("admin reload", client=environ.get("REMOTE_ADDR", "-")))
        try:
            changed, kept = self.app.reload_from_file()
        except ConfigError as error:
            return _error("400 Bad Request", f"config reload refused, the running config "
                                             f"stays: {error}")
        self.metrics.admin_changed("reload")
        if self.app.group is not None:
            self.app.group.reload_others()
        return _answer("200 OK", {"changed": changed, "needs_restart": kept})

    def entry(self, pool, backend) -> dict:
        """One backend as the API shows it; under a gunicorn group its requests in flight
        are the whole group's (what a deploy waits on before it restarts the backend)."""
        in_flight = backend.in_flight
        if self.app.group is not None:
            in_flight += self.app.group.totals(pool.name, backend.url, others=True)["in_flight"]
        return {"route": pool.name, "backend": backend.url, "state": backend.state,
                "admin_state": backend.admin_state, "weight": backend.weight,
                "configured_weight": backend.config.weight, "admin_weight": backend.admin_weight,
                "in_flight": in_flight, "max_conns": backend.config.max_conns,
                # The pool's queue (SPEC §8): requests waiting for a slot in it, the group's.
                "queued": pool.capacity.depth}


def cross_site(environ: dict) -> str:
    """Why a browser on another site could have sent this request ("" if none could).

    A browser sends ``Origin`` with every cross-origin request and every non-GET one: it
    must be the admin's own. A change must say ``Content-Type: application/json``, which a
    form or a "simple" cross-origin request cannot (it would need a CORS preflight, which
    is never granted). Without a token, where the admin trusts loopback clients, the Host
    must also be an address or ``localhost`` for a change: a page on a name that DNS
    rebinds to 127.0.0.1 would otherwise be "same origin" (reading is no more than
    ``/status`` shows). From a proxy of ``forwarded.trusted_proxies``, the admin's own
    origin is the one its ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` say."""
    origin = environ.get("HTTP_ORIGIN")
    config = environ[REQUEST].runtime.config
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST", "")
    if config.forwarded.trusts(environ.get("REMOTE_ADDR", "")):
        # Behind a proxy of forwarded.trusted_proxies (one that terminates TLS, say), the
        # page's origin is the scheme and host that proxy says its client used.
        scheme = _first(environ.get("HTTP_X_FORWARDED_PROTO", "")).lower() or scheme
        host = _first(environ.get("HTTP_X_FORWARDED_HOST", "")) or host
    if origin is not None and _origin(origin) != _origin(f"{scheme}://{host}"):
        return f"cross-site request refused: Origin {origin} is not this admin's own"
    if environ["REQUEST_METHOD"] in SAFE_METHODS:
        return ""
    if environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower() != JSON:
        return f"a change needs Content-Type: {JSON} (cross-site requests are refused)"
    if not config.admin.token and not _local_name(host):
        return ("without an admin token the API answers requests to an address or to "
                "localhost only (Host is a name that could point anywhere)")
    return ""


def _first(value: str) -> str:
    """The first of a comma-separated list of forwarded values (the client's own hop)."""
    return value.split(",", 1)[0].strip()


def _origin(value: str) -> str:
    """``scheme://host[:port]``, lowercased, without the scheme's default port."""
    scheme, _, rest = value.strip().lower().partition("://")
    host, _, port = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
    return f"{scheme}://{host}" + (f":{port}" if port and port != DEFAULT_PORTS.get(scheme) else "")


def _local_name(host: str) -> bool:
    name = host.lower()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else name
    else:
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _read_json(environ: dict):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        raise BadField("body", f"over {MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(length) if length else b""
    try:
        return json.loads(raw)
    except ValueError:
        raise BadField("body", "not a JSON document") from None


def _patch_fields(change, runtime) -> tuple[str, str, object, object]:
    """route, backend, state and weight of a PATCH body (KEEP for the ones left out)."""
    if not isinstance(change, dict):
        raise BadField("body", "must be a JSON object")
    for key in change:
        if key not in PATCH_FIELDS:
            raise BadField(key, f"unknown field (fields: {', '.join(PATCH_FIELDS)})")
    if "route" in change:
        pool = change["route"]
        if not isinstance(pool, str):
            raise BadField("route", "must be a route's name, or default")
    elif runtime.config.routes:
        raise BadField("route", "required: the config has routes (the top-level pool is default)")
    else:
        pool = DEFAULT_ROUTE
    url = change.get("backend")
    if not isinstance(url, str) or not url:
        raise BadField("backend", "required: a backend URL as /status shows it")
    if "state" not in change and "weight" not in change:
        raise BadField("state", "give state, weight or both")
    return pool, url, change.get("state", KEEP), change.get("weight", KEEP)


def _weight(weight: int | None) -> str:
    return "configured" if weight is None else str(weight)


def _answer(status: str, document) -> tuple[str, list, bytes]:
    return status, [("Content-Type", JSON)], json.dumps(document, separators=(",", ":")).encode()


def _error(status: str, message: str, **more) -> tuple[str, list, bytes]:
    return _answer(status, {"error": message, **more})
