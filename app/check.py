"""``python wsgi.py --check [--probe]``: the effective config as a table, and a probe of each backend.

``describe`` renders every setting with its value as a user would write it and where it came
from (file, environment, default); with routes, the route table in precedence order (the
order requests are matched in), each route's effective pool settings and where each came
from, and a warning for a route that can never match (``shadowed``). ``probe`` resolves
each DNS name once (``app.lb.discovery``) and lists what it found, then sends one health
check to each backend of each pool, through the same ``HealthChecker.probe`` the running
proxy uses, and reports each result. Neither serves nor starts anything.
"""
from __future__ import annotations

import dataclasses
import time

import gevent

from .config import (DEFAULT_ROUTE, POOL_KEYS, SCALARS, SECRETS, SECTIONS, TLS_KEYS, Config,
                     ConfigError, RouteConfig, format_value)

# How long each platform waits, by default, between its SIGTERM and its SIGKILL.
PLATFORM_GRACE = (
    ("docker stop", 10.0, "docker run --stop-timeout, compose stop_grace_period"),
    ("Kubernetes", 30.0, "the pod's terminationGracePeriodSeconds"),
    ("a PaaS", 30.0, "fixed on most"),
)
EXIT_MARGIN = 1.0   # seconds the process takes to exit once the drain is over


def describe(config: Config, ok: bool = True) -> str:
    """The effective settings, one a line, aligned: key, value, (origin); headed
    ``config OK`` when ``ok``, else ``config has problems`` (the lines after say which)."""
    rows = [(key, format_value(key, getattr(config, key)), config.origins.get(key, "default"))
            for key in SCALARS]
    for index, backend in enumerate(config.backends):
        value = f"{backend.url} weight={backend.weight}" + (" backup" if backend.backup else "")
        if backend.srv:
            value = f"srv {backend.srv} scheme={backend.url.partition(':')[0]}" + \
                (" backup" if backend.backup else "")
        if backend.discovered:
            value += f" resolve={format_value('slow_start', backend.resolve)}"
        if backend.max_conns:
            value += f" max_conns={backend.max_conns}"
        rows.append((f"backends[{index}]", value,
                     config.origins.get(f"backends[{index}]", config.origins.get("backends", "file"))))
    for section in SECTIONS:
        values = getattr(config, section)
        for field in dataclasses.fields(values):
            key = f"{section}.{field.name}"
            value = getattr(values, field.name)
            rows.append((key, _shown(key, value), config.origins.get(key, "default")))
    if config.tls is not None:
        for key in TLS_KEYS:
            value = getattr(config.tls, key)
            if key == "certificates":
                for index, files in enumerate(value):
                    rows.append((f"tls.certificates[{index}]", f"cert={files.cert} key={files.key}",
                                 config.origins.get("tls.certificates", "file")))
                continue
            rows.append((f"tls.{key}", format_value(f"tls.{key}", value),
                         config.origins.get(f"tls.{key}", "default")))
    key_width = max(len(key) for key, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines = [f"config OK: {config.source}" if ok else
             f"config has problems (ERROR lines below): {config.source}"]
    lines += [f"  {key:<{key_width}}  {value:<{value_width}}  ({origin})"
              for key, value, origin in rows]
    if config.routes:
        lines += describe_routes(config)
    lines.append(shutdown_budget(config))
    return "\n".join(lines)


def shutdown_seconds(config: Config) -> float:
    """The longest a SIGTERM can take to end in an exit: the delay, the drain, the exit."""
    return config.shutdown_delay + config.shutdown_timeout + EXIT_MARGIN


def cut_short(config: Config, grace: float) -> bool:
    """Whether a platform's SIGKILL ``grace`` seconds after its SIGTERM would cut off
    requests the settings give time to finish: when it comes before the delay and the drain
    are over. (The second or so the process takes to exit after the drain cuts nothing: what
    is still in flight then is cut at the drain's deadline anyway.)"""
    return config.shutdown_delay + config.shutdown_timeout > grace


def shutdown_budget(config: Config) -> str:
    """One line: how long SIGTERM to exit can take, against each platform's default wait;
    a platform is said to need more only when its wait would cut the drain short."""
    total = shutdown_seconds(config)
    verdicts = []
    for platform, grace, where in PLATFORM_GRACE:
        fits = f"needs more (set {where})" if cut_short(config, grace) else "fits"
        verdicts.append(f"{platform} {grace:g}s: {fits}")
    return (f"shutdown: SIGTERM to exit takes up to {total:g}s (shutdown_delay "
            f"{format_value('shutdown_delay', config.shutdown_delay)} + shutdown_timeout "
            f"{format_value('shutdown_timeout', config.shutdown_timeout)} + {EXIT_MARGIN:g}s "
            f"to exit); default waits before SIGKILL: " + "; ".join(verdicts))


def shutdown_warning(config: Config) -> str | None:
    """A warning for the log at start when the delay and the drain outlast Kubernetes' and a
    PaaS's default 30 s (Docker's 10 s is left to ``docker run --stop-timeout``, see README,
    and to ``--check``'s budget line)."""
    total = shutdown_seconds(config)
    grace = min(grace for platform, grace, _ in PLATFORM_GRACE if platform != "docker stop")
    if not cut_short(config, grace):
        return None
    return (f"shutdown_delay + shutdown_timeout ({total - EXIT_MARGIN:g}s) outlast the "
            f"{grace:g}s Kubernetes and a PaaS wait by default before SIGKILL: "
            f"in-flight requests may be cut off unless the platform is given {total:g}s or more")


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
    rows = [(f"backends[{index}]", f"{b.url} weight={b.weight}" + (" backup" if b.backup else "")
             + (f" max_conns={b.max_conns}" if b.max_conns else ""),
             "file" if route.name != DEFAULT_ROUTE else
             config.origins.get(f"backends[{index}]", "file"))
            for index, b in enumerate(route.backends)]
    for key in POOL_KEYS:
        section, _, name = key.partition(".")
        if section == "timeouts" and name in ("client_header", "client_idle"):
            continue        # the connection's, not a pool's
        rows.append((key, _shown(key, _value(route, key)), route.origins.get(key, "default")))
    key_width = max(len(key) for key, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    return [f"route {route.name} ({where}):"] + [
        f"  {key:<{key_width}}  {value:<{value_width}}  ({origin})" for key, value, origin in rows]


def _shown(key: str, value) -> str:
    if key in SECRETS:
        return "(set)" if value else "(none)"
    return format_value(key, value) if value != "" else '""'    # an empty string, as written


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


def certificates(config: Config, now: float | None = None) -> tuple[str, str]:
    """Each TLS certificate: names, issuer, not-after and days left, with a warning under
    ``EXPIRY_WARNING_DAYS`` and an error for one clients refuse (expired, not yet valid);
    and the verdict: ``ok``, ``refused`` (the proxy starts and serves, but clients refuse a
    certificate) or ``error`` (a certificate that cannot be served: the proxy does not start)."""
    from .server.certificates import EXPIRY_WARNING_DAYS, load_certificates
    try:
        loaded = load_certificates(config.tls, config.source)
    except ConfigError as error:
        return f"tls: config error: {error}", "error"
    now = time.time() if now is None else now
    lines, verdict = [], "ok"
    for index, certificate in enumerate(loaded.certificates):
        info = certificate.describe(now)
        days = info["days_left"]
        names = ",".join(info["names"])
        lines.append(f"tls: certificate[{index}]{' (default)' if index == 0 else ''} "
                     f"{certificate.files.cert}: names={names} "
                     f"issuer={info['issuer']!r} not_after={info['not_after_text']} "
                     f"days_left={days:g}")
        if info["problem"] is not None:
            verdict = "refused"
            lines.append(f"tls: ERROR: certificate[{index}] ({names}) {info['problem']}: "
                         "clients refuse it (the proxy starts and serves it, logging an ERROR)")
        elif days < EXPIRY_WARNING_DAYS:
            lines.append(f"tls: WARNING: certificate[{index}] ({names}) expires in {days:g} days")
    return "\n".join(lines), verdict


def probe(app) -> tuple[str, bool]:
    """One health check per backend of each pool of ``app``, at once; the report and
    whether all passed. Each pool's checks are its own (path, timeout, expected statuses)."""
    pools = app.runtime.pools
    lines, resolved = _resolve(app)
    members = [(pool, backend) for pool in pools for backend in pool.backends]
    jobs = [gevent.spawn(pool.health.probe, backend) for pool, backend in members]
    gevent.joinall(jobs, timeout=max(pool.settings.health_check.timeout for pool in pools) + 1)
    named = len(pools) > 1 or pools[0].name != DEFAULT_ROUTE
    width = max((len(backend.url) for _, backend in members), default=0)
    name_width = max(len(pool.name) for pool in pools)
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
                detail += " (not in health_check.expect" + \
                    (f": GET {pool.settings.health_check.path} is likely the wrong path; "
                     f"set {_path_key(pool)})" if 400 <= result.status <= 499 else ")")
            detail += f" ({result.latency * 1000:.0f}ms)"
        failed += verdict != "up"
        route = f"{pool.name:<{name_width}}  " if named else ""
        lines.append(f"  {route}{backend.url:<{width}}  {verdict:<4}  {detail}")
    lines.append(f"probe: {len(members) - failed} of {len(members)} backend(s) up")
    return "\n".join(lines), failed == 0 and resolved and bool(members)


def _path_key(pool) -> str:
    """The key that sets ``pool``'s health-check path, as the start-up warning names it."""
    return "health_check.path" + (f" of route {pool.name}" if pool.name != DEFAULT_ROUTE else "")


def probe_hint(config: Config) -> str:
    """The line ``--check`` ends with when not probing: what ``--probe`` would catch."""
    paths = ", ".join(dict.fromkeys(pool.health_check.path for pool in config.pools
                                    if pool.health_check.enabled))
    if not paths:
        return "probe: not run (health checks are off)"
    return (f"probe: not run; add --probe to send one health check (GET {paths}) to each "
            "backend: a wrong health_check.path would take every backend down")


def _resolve(app) -> tuple[list[str], bool]:
    """Each DNS name of each pool looked up once: the lines that say what it gave, and
    whether all did."""
    discoveries = [pool.discovery for pool in app.runtime.pools if pool.discovery.entries]
    if not discoveries:
        return [], True
    gevent.joinall([gevent.spawn(discovery.resolve_once) for discovery in discoveries])
    lines = [f"resolve: each DNS name once, via {discoveries[0].describe_servers()}, timeout "
             f"{format_value('resolver.timeout', app.config.resolver.timeout)}"]
    ok = True
    for entry in (entry for discovery in discoveries for entry in discovery.describe()):
        if entry["error"]:
            ok = False
            lines.append(f"  {entry['backend']}  FAILED  {entry['error']}")
            continue
        lines.append(f"  {entry['backend']}  {entry['type']}  {len(entry['members'])} member(s), "
                     f"ttl {entry['ttl_seconds']:g}s, from {entry['server']}")
        if entry.get("partial"):        # answered through the other family: not a failure
            lines.append(f"    partly failed (its members stay): {entry['partial']}")
        lines += [f"    {member}" for member in entry["members"]]
    return lines, ok
