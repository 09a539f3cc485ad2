"""``python wsgi.py --check [--probe]``: the effective config as a table, and a probe of each backend.

``describe`` renders every setting with its value as a user would write it and where it came
from (file, environment, default). ``probe`` sends one health check to each backend, through
the same ``HealthChecker.probe`` the running proxy uses, and reports each result. Neither
serves nor starts anything.
"""
from __future__ import annotations

import dataclasses
import time

import gevent

from .config import SCALARS, SECTIONS, TLS_KEYS, Config, ConfigError, format_value


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
    lines = [f"config OK: {config.source}"]
    lines += [f"  {key:<{key_width}}  {value:<{value_width}}  ({origin})"
              for key, value, origin in rows]
    return "\n".join(lines)


def certificates(config: Config, now: float | None = None) -> tuple[str, bool]:
    """Each TLS certificate: names, issuer, not-after and days left, with a warning under
    ``EXPIRY_WARNING_DAYS``; and whether all can be served (an error otherwise)."""
    from .server.certificates import EXPIRY_WARNING_DAYS, load_certificates
    try:
        loaded = load_certificates(config.tls, config.source, now)
    except ConfigError as error:
        return f"tls: config error: {error}", False
    now = time.time() if now is None else now
    lines = []
    for index, certificate in enumerate(loaded.certificates):
        info = certificate.describe(now)
        days = info["days_left"]
        lines.append(f"tls: certificate[{index}]{' (default)' if index == 0 else ''} "
                     f"{certificate.files.cert}: names={','.join(info['names'])} "
                     f"issuer={info['issuer']!r} not_after={info['not_after_text']} "
                     f"days_left={days:g}")
        if days < EXPIRY_WARNING_DAYS:
            lines.append(f"tls: WARNING: certificate[{index}] ({','.join(info['names'])}) "
                         f"expires in {days:g} days")
    return "\n".join(lines), True


def probe(app) -> tuple[str, bool]:
    """One health check per backend of ``app``, at once; the report and whether all passed."""
    rules = app.config.health_check
    backends = list(app.balancer.backends)
    jobs = [gevent.spawn(app.health.probe, backend) for backend in backends]
    gevent.joinall(jobs, timeout=rules.timeout + 1)
    width = max(len(backend.url) for backend in backends)
    lines = [f"probe: GET {rules.path} on each backend, timeout "
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
    return "\n".join(lines), failed == 0
