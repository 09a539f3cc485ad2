"""``python wsgi.py --check [--probe]``: the effective config as a table, and a probe of each backend.

``describe`` renders every setting with its value as a user would write it and where it came
from (file, environment, default); with routes, the route table in precedence order (the
order requests are matched in), each route's effective pool settings and where each came
from, and a warning for a route that can never match (``shadowed``). ``probe`` sends one
health check to each backend of each pool, through the same ``HealthChecker.probe`` the
running proxy uses, and reports each result. Neither serves nor starts anything.
"""
from __future__ import annotations

import dataclasses

import gevent

from .config import DEFAULT_ROUTE, POOL_KEYS, SCALARS, SECTIONS, Config, RouteConfig, format_value


def describe(config: Config) -> str:
    """The effective settings, one a line, aligned: key, value, (origin)."""
    rows = [(key, format_value(key, getattr(config, key)), config.origins.get(key, "default"))
            for key in SCALARS]
    for index, backend in enumerate(config.backends):
        value = f"{backend.url} weight={backend.weight}" + (" backup" if backend.backup else "")
        rows.append((f"backends[{index}]", value,
                     config.origins.get(f"backends[{index}]", config.origins.get("backends", "file"))))
    for section in SECTIONS:
        values = getattr(config, section)
        for field in dataclasses.fields(values):
            key = f"{section}.{field.name}"
            value = getattr(values, field.name)
            if key == "admin.token":
                shown = "(set)" if value else "(none)"
            else:
                shown = format_value(key, value)
            rows.append((key, shown, config.origins.get(key, "default")))
    key_width = max(len(key) for key, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines = [f"config OK: {config.source}"]
    lines += [f"  {key:<{key_width}}  {value:<{value_width}}  ({origin})"
              for key, value, origin in rows]
    if config.routes:
        lines += describe_routes(config)
    return "\n".join(lines)


def describe_routes(config: Config) -> list[str]:
    """The route table in precedence order, each route's settings, then any warnings."""
    from .lb.routes import build_runtime
    table = build_runtime(config, upstream=None).table
    ordered = table.ordered()
    lines = ["routes, in the order a request is matched against them (the first match wins):"]
    width = max(len(pool.name) for _, pool in ordered)
    rule_width = max(len(host) for host, _ in ordered)
    path_width = max(len(pool.settings.path or "/") for _, pool in ordered)
    for position, (host, pool) in enumerate(ordered, start=1):
        route = pool.settings
        target = ", ".join(b.url for b in route.backends)
        strip = " (strip_prefix)" if route.strip_prefix else ""
        lines.append(f"  {position:>3}. {pool.name:<{width}}  host {host:<{rule_width}}  "
                     f"path {route.path or '/':<{path_width}}  -> {target}{strip}")
    for pool in dict.fromkeys(pool for _, pool in ordered):
        lines += _route_settings(pool.settings, config)
    lines += [f"warning: {warning}" for warning in shadowed(config)]
    return lines


def _route_settings(route: RouteConfig, config: Config) -> list[str]:
    where = "top-level backends" if route.name == DEFAULT_ROUTE else \
        f"routes[{config.routes.index(route)}], line {route.line}"
    rows = [(f"backends[{index}]", f"{b.url} weight={b.weight}" + (" backup" if b.backup else ""),
             "file" if route.name != DEFAULT_ROUTE else
             config.origins.get(f"backends[{index}]", "file"))
            for index, b in enumerate(route.backends)]
    for key in POOL_KEYS:
        section, _, name = key.partition(".")
        if section == "timeouts" and name in ("client_header", "client_idle"):
            continue        # the connection's, not a pool's
        value = _value(route, key)
        rows.append((key, format_value(key, value), route.origins.get(key, "default")))
    key_width = max(len(key) for key, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    return [f"route {route.name} ({where}):"] + [
        f"  {key:<{key_width}}  {value:<{value_width}}  ({origin})" for key, value, origin in rows]


def _value(route: RouteConfig, key: str):
    value = route
    for part in key.split("."):
        value = getattr(value, part)
    return value


def shadowed(config: Config) -> list[str]:
    """Why a route (or the default pool) can never match a request, for each that cannot."""
    warnings = []
    prefix = config.admin.prefix
    for route in config.routes:
        if route.path and (route.path == prefix or route.path.startswith(prefix + "/")):
            warnings.append(f"route {route.name} (line {route.line}) can never match: its path "
                            f"{route.path} is under admin.prefix {prefix}, which the admin pages answer")
    catch_all = next((route for route in config.routes if not route.hosts and not route.path), None)
    if catch_all is not None and config.backends:
        warnings.append(f"the top-level backends (route {DEFAULT_ROUTE}) can never match: route "
                        f"{catch_all.name} (line {catch_all.line}) takes every request no other "
                        "route takes")
    return warnings


def probe(app) -> tuple[str, bool]:
    """One health check per backend of each pool of ``app``, at once; the report and
    whether all passed. Each pool's checks are its own (path, timeout, expected statuses)."""
    pools = app.runtime.pools
    members = [(pool, backend) for pool in pools for backend in pool.backends]
    jobs = [gevent.spawn(pool.health.probe, backend) for pool, backend in members]
    gevent.joinall(jobs, timeout=max(pool.settings.health_check.timeout for pool in pools) + 1)
    named = len(pools) > 1 or pools[0].name != DEFAULT_ROUTE
    width = max(len(backend.url) for _, backend in members)
    name_width = max(len(pool.name) for pool in pools)
    lines = []
    for pool in pools:
        rules = pool.settings.health_check
        lines.append(f"probe: GET {rules.path} on each backend"
                     + (f" of route {pool.name}" if named else "") + ", timeout "
                     f"{format_value('health_check.timeout', rules.timeout)}, passing "
                     f"{format_value('health_check.expect', rules.expect)}")
    failed = 0
    for (pool, backend), job in zip(members, jobs):
        result = job.value if job.successful() else None
        if result is None:
            job.kill(block=False)
            verdict, detail = "DOWN", "the check did not finish"
        else:
            verdict = "up" if result.ok else "DOWN"
            detail = (f"status {result.status}" if result.status is not None else result.error)
            if result.status is not None and not result.ok:
                detail += " (not in health_check.expect)"
            detail += f" ({result.latency * 1000:.0f}ms)"
        failed += verdict != "up"
        route = f"{pool.name:<{name_width}}  " if named else ""
        lines.append(f"  {route}{backend.url:<{width}}  {verdict:<4}  {detail}")
    lines.append(f"probe: {len(members) - failed} of {len(members)} backend(s) up")
    return "\n".join(lines), failed == 0
