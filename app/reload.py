"""Hot reload, the pure part: which settings a running proxy can take, and what changed.

``App.reload`` applies a new config to a running proxy; this module only compares two
configs. ``fixed_at_start`` keeps what cannot change without a restart (the listening
address, and the connection limit that sizes the server's pool); ``changes`` says, one item
per setting, what a reload changes, for the log line. It knows nothing of serving.
"""
from __future__ import annotations

import dataclasses

from .config import POOL_KEYS, SECRETS, Config, format_value

# Settings bound when the server starts: a reload keeps the running value and says so.
# Whether the port speaks TLS at all, and the redirect listener's port, are bound too;
# the certificates, min_version and hsts of a TLS listener are not.
FIXED_AT_START = ("host", "port", "limits.max_connections", "tls", "tls.redirect_from", "cluster")

# Settings that are not behaviour: where the file is and where each value came from.
NOT_SETTINGS = ("source", "origins", "backends", "routes", "tls")
TLS_SETTINGS = ("certificates", "min_version", "redirect_from", "hsts")

# A route's settings that are its rule, shown by name in the reload's log line.
ROUTE_RULE = ("hosts", "path", "strip_prefix")


def fixed_at_start(running: Config, new: Config,
                   also_fixed: tuple[str, ...] = ()) -> tuple[Config, list[str]]:
    """``new`` with the running values of ``FIXED_AT_START`` and of ``also_fixed`` (what the
    server running the app bound at its start, e.g. gunicorn's settings made from the
    config); and the keys it had to keep."""
    keys = FIXED_AT_START + tuple(key for key in also_fixed if key not in FIXED_AT_START)
    kept = [key for key in keys if _get(new, key) != _get(running, key)]
    if "tls" in kept:
        kept.remove("tls")
        kept = [key for key in kept if key != "tls.redirect_from"]
        kept.append("tls (on or off)")
    origins = dict(new.origins)
    for key in keys:
        origins[key] = running.origins.get(key, "default")
    for key in keys:
        if key.split(".")[0] != "tls":       # TLS is kept whole or in part below
            new = _replace(new, key.split("."), _get(running, key))
    tls = new.tls
    if (running.tls is None) != (new.tls is None):
        tls = running.tls
    elif tls is not None:
        tls = dataclasses.replace(tls, redirect_from=running.tls.redirect_from)
    return dataclasses.replace(new, tls=tls, origins=origins), kept


def _replace(value, path: list[str], replacement):
    """``value`` (a frozen dataclass) with the setting at ``path`` replaced."""
    if len(path) == 1:
        return dataclasses.replace(value, **{path[0]: replacement})
    inner = _replace(getattr(value, path[0]), path[1:], replacement)
    return dataclasses.replace(value, **{path[0]: inner})


def changes(old: Config, new: Config) -> list[str]:
    """What differs from ``old`` to ``new``: backends first, then each other setting, then
    the routes (added, removed, and for a kept one what changed in it)."""
    items = _backend_changes(old.backends, new.backends)
    if old.tls is not None and new.tls is not None:
        for key in TLS_SETTINGS:
            before, after = getattr(old.tls, key), getattr(new.tls, key)
            if before != after:
                shown = "(changed)" if key == "certificates" else \
                    f"{format_value('tls.' + key, before)}->{format_value('tls.' + key, after)}"
                items.append(f"tls.{key} {shown}")
    for key in _setting_keys(old):
        before, after = _get(old, key), _get(new, key)
        if before != after:
            items.append(f"{key} {_change(key, before, after)}")
    old_routes = {route.name: route for route in old.routes}
    new_routes = {route.name: route for route in new.routes}
    items += [f"+route {name}" for name in new_routes if name not in old_routes]
    items += [f"-route {name}" for name in old_routes if name not in new_routes]
    for name, route in new_routes.items():
        before = old_routes.get(name)
        if before is None:
            continue
        inside = _backend_changes(before.backends, route.backends)
        inside += [f"{key} {_route_value(before, key)}->{_route_value(route, key)}"
                   for key in ROUTE_RULE if getattr(before, key) != getattr(route, key)]
        inside += [f"{key} {_change(key, _get(before, key), _get(route, key))}"
                   for key in POOL_KEYS if _get(before, key) != _get(route, key)]
        items += [f"route {name}: {item}" for item in inside]
    return items


def _change(key: str, before, after) -> str:
    """``before->after`` as written; a secret only ``(changed)``."""
    if key in SECRETS:
        return "(changed)"
    return f"{format_value(key, before)}->{format_value(key, after)}"


def _route_value(route, key: str) -> str:
    value = getattr(route, key)
    if key == "hosts":
        return ",".join(value) or "(any)"
    if key == "path":
        return value or "(any)"
    return format_value(key, value)


def _backend_changes(old_list, new_list) -> list[str]:
    items = []
    old_backends = {b.url: b for b in old_list}
    new_backends = {b.url: b for b in new_list}
    items += [f"+backend {url}" + (f" weight {b.weight}" if b.weight != 1 else "")
              + (" backup" if b.backup else "")
              for url, b in new_backends.items() if url not in old_backends]
    items += [f"-backend {url}" for url in old_backends if url not in new_backends]
    for url, backend in new_backends.items():
        before = old_backends.get(url)
        if before is None:
            continue
        if before.weight != backend.weight:
            items.append(f"{url} weight {before.weight}->{backend.weight}")
        if before.resolve != backend.resolve:
            items.append(f"{url} resolve {format_value('slow_start', before.resolve)}->"
                         f"{format_value('slow_start', backend.resolve)}")
        if before.max_conns != backend.max_conns:
            items.append(f"{url} max_conns {before.max_conns}->{backend.max_conns}")
        if before.backup != backend.backup:
            items.append(f"{url} backup {format_value('backup', before.backup)}->"
                         f"{format_value('backup', backend.backup)}")
    if [b.url for b in old_list] != [b.url for b in new_list] and \
            set(old_backends) == set(new_backends):
        items.append("backends reordered")
    return items


def _setting_keys(config: Config) -> list[str]:
    keys = []
    for field in dataclasses.fields(config):
        if field.name in NOT_SETTINGS:
            continue
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{field.name}.{inner.name}" for inner in dataclasses.fields(value)]
        else:
            keys.append(field.name)
    return keys


def _get(config: Config, key: str):
    value = config
    for part in key.split("."):
        if value is None:
            return None          # tls.redirect_from without tls
        value = getattr(value, part)
    if key == "tls":
        return value is not None   # on or off
    return value

