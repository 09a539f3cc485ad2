"""``python wsgi.py --check [--probe]``: the effective config as a table, and a probe of each backend.

``describe`` renders every setting with its value as a user would write it and where it came
from (file, environment, default). ``probe`` resolves each DNS name once (``app.lb.discovery``)
and lists what it found, then sends one health check to each backend, through the same
``HealthChecker.probe`` the running proxy uses, and reports each result. Neither serves
nor starts anything.
"""
from __future__ import annotations

import dataclasses

import gevent

from .config import SCALARS, SECTIONS, Config, format_value

# How long each platform waits, by default, between its SIGTERM and its SIGKILL.
PLATFORM_GRACE = (
    ("docker stop", 10.0, "docker run --stop-timeout, compose stop_grace_period"),
    ("Kubernetes", 30.0, "the pod's terminationGracePeriodSeconds"),
    ("a PaaS", 30.0, "fixed on most"),
)
EXIT_MARGIN = 1.0   # seconds the process takes to exit once the drain is over


def describe(config: Config) -> str:
    """The effective settings, one a line, aligned: key, value, (origin)."""
    rows = [(key, format_value(key, getattr(config, key)), config.origins.get(key, "default"))
            for key in SCALARS]
    for index, backend in enumerate(config.backends):
        value = f"{backend.url} weight={backend.weight}" + (" backup" if backend.backup else "")
        if backend.srv:
            value = f"srv {backend.srv} scheme={backend.url.partition(':')[0]}" + \
                (" backup" if backend.backup else "")
        if backend.discovered:
            value += f" resolve={format_value('slow_start', backend.resolve)}"
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
    lines.append(shutdown_budget(config))
    return "\n".join(lines)


def shutdown_seconds(config: Config) -> float:
    """The longest a SIGTERM can take to end in an exit: the delay, the drain, the exit."""
    return config.shutdown_delay + config.shutdown_timeout + EXIT_MARGIN


def shutdown_budget(config: Config) -> str:
    """One line: how long SIGTERM to exit can take, against each platform's default wait."""
    total = shutdown_seconds(config)
    verdicts = []
    for platform, grace, where in PLATFORM_GRACE:
        fits = "fits" if total <= grace else f"needs more (set {where})"
        verdicts.append(f"{platform} {grace:g}s: {fits}")
    return (f"shutdown: SIGTERM to exit takes up to {total:g}s (shutdown_delay "
            f"{format_value('shutdown_delay', config.shutdown_delay)} + shutdown_timeout "
            f"{format_value('shutdown_timeout', config.shutdown_timeout)} + {EXIT_MARGIN:g}s "
            f"to exit); default waits before SIGKILL: " + "; ".join(verdicts))


def shutdown_warning(config: Config) -> str | None:
    """A warning for the log at start when the shutdown outlasts Kubernetes' and a PaaS's
    default 30 s (Docker's 10 s is left to ``docker run --stop-timeout``, see README)."""
    total = shutdown_seconds(config)
    grace = min(grace for platform, grace, _ in PLATFORM_GRACE if platform != "docker stop")
    if total <= grace:
        return None
    return (f"shutdown_delay + shutdown_timeout ({total - EXIT_MARGIN:g}s) leave no time to "
            f"exit within the {grace:g}s Kubernetes and a PaaS wait by default before SIGKILL: "
            f"in-flight requests may be cut off unless the platform is given {total:g}s or more")


def probe(app) -> tuple[str, bool]:
    """One health check per backend of ``app``, at once; the report and whether all passed."""
    rules = app.config.health_check
    lines, resolved = _resolve(app)
    backends = list(app.balancer.backends)
    jobs = [gevent.spawn(app.health.probe, backend) for backend in backends]
    gevent.joinall(jobs, timeout=rules.timeout + 1)
    width = max((len(backend.url) for backend in backends), default=0)
    lines += [f"probe: GET {rules.path} on each backend, timeout "
             f"{format_value('health_check.timeout', rules.timeout)}, passing "
             f"{format_value('health_check.expect', rules.expect)}"]
    failed = 0
    for backend, job in zip(backends, jobs):
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
        lines.append(f"  {backend.url:<{width}}  {verdict:<4}  {detail}")
    lines.append(f"probe: {len(backends) - failed} of {len(backends)} backend(s) up")
    return "\n".join(lines), failed == 0 and resolved and bool(backends)


def _resolve(app) -> tuple[list[str], bool]:
    """Each DNS name looked up once: the lines that say what it gave, and whether all did."""
    discovery = app.discovery
    if discovery is None or not discovery.entries:
        return [], True
    discovery.resolve_once()
    lines = [f"resolve: each DNS name once, via {discovery.describe_servers()}, timeout "
             f"{format_value('resolver.timeout', app.config.resolver.timeout)}"]
    ok = True
    for entry in discovery.describe():
        if entry["error"]:
            ok = False
            lines.append(f"  {entry['backend']}  FAILED  {entry['error']}")
            continue
        lines.append(f"  {entry['backend']}  {entry['type']}  {len(entry['members'])} member(s), "
                     f"ttl {entry['ttl_seconds']:g}s, from {entry['server']}")
        lines += [f"    {member}" for member in entry["members"]]
    return lines, ok
