"""The ``routes:`` list: each route's own keys, its pool settings merged over the top
level's, and the rules two routes may not share.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .schema import DEFAULT_ROUTE, RouteConfig
from .values import _boolean, _path, _string
from .keys import (POOL_SCALARS, POOL_SECTIONS, ROUTE_KEYS, ROUTE_ONLY_TIMEOUTS, SCALARS, SECTIONS,
                   _HOST_NAME, _ROUTE_NAME)
from .document import _Document, _checked, _suggest
from .pools import _backends, _check_health, _check_sticky, _default_health_timeout


def _routes(document: _Document, raw: Any, top: dict, top_origins: dict) -> tuple[RouteConfig, ...]:
    """The ``routes:`` list, each route's pool settings merged over the top level's."""
    if not isinstance(raw, list):
        raise document.error(("routes",), "expected a list of routes (each with a name and backends)")
    routes, names, rules = [], {}, {}
    for index, item in enumerate(raw):
        at = ("routes", index)
        if not isinstance(item, dict):
            raise document.error(at, "a route is a mapping with at least `name` and `backends`")
        for key in item:
            if key not in ROUTE_KEYS:
                raise document.error(at + (key,), "unknown key" + _suggest(key, ROUTE_KEYS),
                                     at_key=True)
        for key in ("name", "backends"):
            if key not in item:
                raise document.error(at, f"a route needs `{key}`")
        name = _checked(document, at + ("name",), _route_name, item["name"])
        if name in names:
            raise document.error(at + ("name",), f"route {name!r} is already the name of "
                                 f"routes[{names[name]}] (line {document.locate(('routes', names[name]))[0]})")
        names[name] = index
        hosts = _checked(document, at + ("host",), _hosts, item["host"]) if "host" in item else ()
        path = _checked(document, at + ("path",), _route_path, item["path"]) if "path" in item else ""
        for host in hosts or ("",):
            rule = (host, path)
            if rule in rules:
                other = rules[rule]
                raise document.error(at, f"the same host rule ({host or 'any host'}) and path "
                                     f"({path or 'any path'}) as routes[{other}] "
                                     f"(line {document.locate(('routes', other))[0]}): "
                                     "one of them could never match")
            rules[rule] = index
        fields: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for key in POOL_SCALARS:
            if key in item:
                fields[key] = _checked(document, at + (key,), SCALARS[key], item[key])
                origins[key] = f"routes[{index}], " + document.origin(at + (key,))
            else:
                fields[key] = top[key]
                origins[key] = _inherited(top_origins[key])
        for section in POOL_SECTIONS:
            cls, parsers = SECTIONS[section]
            own = item.get(section)
            if own is not None and not isinstance(own, dict):
                raise document.error(at + (section,), "expected a mapping of keys to values")
            own = own or {}
            values = {}
            for key, value in own.items():
                if key not in parsers or (section == "timeouts" and key not in ROUTE_ONLY_TIMEOUTS):
                    hint = " (a connection's timeout, set at the top level only)" \
                        if section == "timeouts" and key in parsers else _suggest(key, parsers)
                    raise document.error(at + (section, key), "unknown key" + hint, at_key=True)
                values[key] = _checked(document, at + (section, key), parsers[key], value)
            fields[section] = dataclasses.replace(top[section], **values)
            for key in parsers:
                origins[f"{section}.{key}"] = (f"routes[{index}], " + document.origin(at + (section, key))
                                               if key in values else
                                               _inherited(top_origins[f"{section}.{key}"]))
        strip = _checked(document, at + ("strip_prefix",), _boolean,
                         item["strip_prefix"]) if "strip_prefix" in item else False
        # Inherited unset (origin "default"), the timeout is capped by this route's interval.
        fields["health_check"] = _default_health_timeout(fields["health_check"], origins)
        route = RouteConfig(name, _backends(document, item["backends"], at + ("backends",)),
                            hosts, path, strip, line=document.locate(at)[0], origins=origins,
                            **fields)
        _check_health(document, route.health_check, at, origins)
        _check_sticky(document, route.sticky, at, origins)
        routes.append(route)
    return tuple(routes)


def _inherited(origin: str) -> str:
    return "default" if origin == "default" else f"top level, {origin}"


def _route_name(value: Any) -> str:
    name = _string(value)
    if not _ROUTE_NAME.match(name):
        raise ValueError(f"{name!r}: a route name is lower-case letters, digits, '_' and '-', "
                         "starting with a letter or digit")
    if name == DEFAULT_ROUTE:
        raise ValueError(f"{DEFAULT_ROUTE!r} is the name of the top-level backends' pool")
    return name


def _hosts(value: Any) -> tuple[str, ...]:
    """``host``: one name, a list of names, or ``*.suffix`` wildcards; lowercased."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a host name or a list of them; leave `host` out for any host")
    hosts = []
    for item in items:
        host = _string(item).strip().lower().rstrip(".")
        if ":" in host and not host.startswith("["):
            raise ValueError(f"{item!r}: a host without its port (matching ignores the port)")
        if not _HOST_NAME.match(host):
            raise ValueError(f"{item!r} is not a host name, \"*.example.com\" or an IPv6 "
                             "literal in brackets")
        if host in hosts:
            raise ValueError(f"{item!r} is listed twice")
        hosts.append(host)
    return tuple(hosts)


def _route_path(value: Any) -> str:
    """``path``: a raw prefix from '/', kept without its trailing '/' ("/" itself: any path)."""
    if "*" in _string(value):
        # Caddy's and Traefik's habit: here a `*` would only ever match a literal `*`.
        before = value[:value.index("*")]
        instead = "leave `path` out for any path" if before in ("", "/") else \
            f"write `path: {before}`: a prefix, matched at a segment boundary"
        raise ValueError(f"{value!r}: a route's path is a prefix, not a pattern, and takes no "
                         f"`*`; {instead}")
    path = _path(value)
    if any(c in path for c in "?# ") or not path.isprintable():
        raise ValueError(f"{value!r}: a path prefix has no query, fragment, space or control character")
    return path.rstrip("/")
