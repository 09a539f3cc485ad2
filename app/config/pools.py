"""What every pool has: its backends (a list of URLs or mappings, or ``MYPROXY_BACKENDS``),
and the checks of its health and sticky settings, for the top level and each route alike.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Mapping
from urllib.parse import urlsplit

from .schema import BackendConfig, ConfigError, HealthCheckConfig, StickyConfig
from .values import DEFAULT_SRV_RESOLVE, parse_backend_url
from .keys import BACKEND_KEYS
from .document import _Document, _checked, _suggest
from .display import format_value


def _backends(document: _Document, raw: Any, at: tuple = ("backends",)) -> tuple[BackendConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise document.error(at, "expected a non-empty list of backend URLs")
    backends = []
    for index, item in enumerate(raw):
        keypath = at + (index,)
        if isinstance(item, dict):
            for key in item:
                if key not in BACKEND_KEYS:
                    raise document.error(keypath + (key,), "unknown key" + _suggest(key, BACKEND_KEYS),
                                         at_key=True)
            fields = {key: _checked(document, keypath + (key,), BACKEND_KEYS[key], value)
                      for key, value in item.items()}
            backends.append(_backend_mapping(document, keypath, fields))
        else:
            backends.append(BackendConfig(_checked(document, keypath, parse_backend_url, item)))
    _check_unique(document, backends, at)
    if not any(b.weight > 0 for b in backends):
        raise document.error(at, "at least one backend needs a weight above 0")
    return tuple(backends)


def _backend_mapping(document: _Document, keypath: tuple, fields: dict) -> BackendConfig:
    """A backend mapping: a URL (found through DNS with ``resolve``), or an ``srv`` name."""
    if "srv" in fields:
        for key in ("url", "weight"):
            if key in fields:
                raise document.error(keypath + (key,), f"an `srv` backend takes no `{key}`: "
                                     "the SRV records give targets, ports and weights", at_key=True)
        scheme = fields.pop("scheme", "http")
        fields.setdefault("resolve", DEFAULT_SRV_RESOLVE)
        return BackendConfig(url=f"{scheme}://{fields['srv']}", **fields)
    if "url" not in fields:
        raise document.error(keypath, "a backend written as a mapping needs a `url` (or an `srv`)")
    if "scheme" in fields:
        raise document.error(keypath + ("scheme",), "`scheme` goes with `srv`; a `url` names "
                             "its own scheme", at_key=True)
    if "resolve" in fields:
        host = urlsplit(fields["url"]).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise document.error(keypath + ("resolve",), f"{host} is an IP address: there is "
                                 "no name to resolve", at_key=True)
    return BackendConfig(**fields)


def _backends_from_env(path: str, text: str) -> tuple[BackendConfig, ...]:
    urls = [part.strip() for part in text.split(",") if part.strip()]
    if not urls:
        raise ConfigError("environment variable MYPROXY_BACKENDS lists no backend URL", path,
                          "backends")
    backends = []
    for url in urls:
        try:
            backends.append(BackendConfig(parse_backend_url(url)))
        except ValueError as error:
            raise ConfigError(f"environment variable MYPROXY_BACKENDS: {error}", path,
                              "backends") from None
    return tuple(backends)


def _check_unique(document: _Document, backends: list[BackendConfig], at: tuple) -> None:
    seen = set()
    for index, backend in enumerate(backends):
        if backend.url in seen:
            raise document.error(at + (index,), f"{backend.url} is listed twice")
        seen.add(backend.url)


def _default_health_timeout(health: HealthCheckConfig, origins: dict) -> HealthCheckConfig:
    """A ``health_check.timeout`` the user did not set is ``min(2s, interval)``: a short
    interval alone must not make the default config invalid (HAProxy takes its check
    timeout from ``inter`` in the same way). ``origins`` says when the cap applied."""
    if origins.get("health_check.timeout") != "default" or \
            not 0 < health.interval < health.timeout:
        return health
    origins["health_check.timeout"] = "default, capped at health_check.interval"
    return dataclasses.replace(health, timeout=health.interval)


def _check_sticky(document: _Document, sticky: StickyConfig, at: tuple,
                  origins: Mapping[str, str]) -> None:
    """Browsers drop a ``SameSite=None`` cookie that is not ``Secure`` (RFC 6265bis §5.4)."""
    if sticky.enabled and sticky.same_site == "none" and sticky.secure == "false":
        source = at if origins.get("sticky.secure", "").startswith("routes[") else ()
        raise document.error(source + ("sticky", "secure"), "must not be false with "
                             "same_site: none (browsers drop such a cookie); use auto or true")


def _check_health(document: _Document, health: HealthCheckConfig, at: tuple,
                  origins: Mapping[str, str]) -> None:
    if health.enabled and health.timeout > health.interval > 0:
        interval = format_value("health_check.interval", health.interval)
        origin = origins.get("health_check.interval", "default")
        # A route's interval is its own (routes[i], ...), the top level's, or the default.
        source = at + ("health_check", "interval") if origin.startswith("routes[") else \
            ("health_check", "interval") if origin != "default" else None
        where = f"line {document.locate(source)[0]}" if source is not None else "its default"
        raise document.error(at + ("health_check", "timeout"),
                             f"must not be longer than health_check.interval ({interval}, {where})")
    if health.enabled and health.interval <= 0:
        raise document.error(at + ("health_check", "interval"), "must be more than 0")
