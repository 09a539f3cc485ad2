"""The key tables: the keys of each section, of the top level, of a backend and of a route,
with the parser of each; what a route may set for its own pool; which values are secrets.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from .schema import (AdminConfig, ClusterConfig, ForwardedConfig, HealthCheckConfig, LOG_FORMATS,
                     LOG_LEVELS, LimitsConfig, POLICIES, PassiveHealthConfig, QueueConfig,
                     RateLimitConfig, ResolverConfig, RetriesConfig, StickyConfig, TimeoutsConfig)
from .values import (_admin_prefix, _boolean, _check_timeout, _choice, _cidrs, _cluster_prefix,
                     _cookie_name, _cookie_path, _dns_servers, _eject_for, _expect, _hash_key,
                     _integer, _listen_host, _path, _port, _positive_duration, _rate, _rate_key,
                     _redis_url, _resolve_interval, _secure, _share, _srv_name, _string, _timeout,
                     _tls_version, parse_backend_url, parse_duration, parse_size)


# Each section maps a key to its parser; the defaults come from the dataclasses (schema).
SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "health_check": (HealthCheckConfig, {
        "enabled": _boolean, "path": _path, "interval": parse_duration,
        "timeout": _check_timeout, "rise": _integer(1), "fall": _integer(1), "expect": _expect,
    }),
    "passive_health": (PassiveHealthConfig, {"failures": _integer(0), "eject_for": _eject_for}),
    "retries": (RetriesConfig, {"attempts": _integer(1), "budget": _share}),
    "timeouts": (TimeoutsConfig, {
        "connect": _timeout, "read": _timeout,
        "client_header": _timeout, "client_idle": _timeout,
        "tunnel_idle": parse_duration,     # 0 = never
    }),
    "queue": (QueueConfig, {"size": _integer(0), "timeout": _timeout}),
    "limits": (LimitsConfig, {
        "max_header_bytes": parse_size, "max_body_bytes": parse_size,
        "max_connections": _integer(1),
    }),
    "rate_limit": (RateLimitConfig, {"rate": _rate, "burst": _integer(0), "key": _rate_key}),
    "forwarded": (ForwardedConfig, {"trusted_proxies": _cidrs, "preserve_host": _boolean}),
    "admin": (AdminConfig, {"prefix": _admin_prefix, "token": _string}),
    "resolver": (ResolverConfig, {"servers": _dns_servers, "timeout": _positive_duration}),
    "sticky": (StickyConfig, {
        "cookie": _cookie_name, "max_age": parse_duration, "secure": _secure,
        "http_only": _boolean, "same_site": _choice("lax", "strict", "none"), "path": _cookie_path,
        "secret": _string,
    }),
    "cluster": (ClusterConfig, {"redis": _redis_url, "prefix": _cluster_prefix,
                                "timeout": _positive_duration}),
}
SCALARS: dict[str, Callable[[Any], Any]] = {
    "port": _port, "host": _listen_host, "policy": _choice(*POLICIES), "hash_key": _hash_key,
    "slow_start": parse_duration, "shutdown_delay": parse_duration,
    "request_buffering": parse_size,
    "shutdown_timeout": parse_duration,
    "log_level": _choice(*LOG_LEVELS), "log_format": _choice(*LOG_FORMATS),
    "access_log": _boolean, "server_timing": _boolean, "expose_backends": _boolean,
}
# The parsers of durations, for showing a value as a user would write it.
DURATIONS = (parse_duration, _positive_duration, _timeout, _check_timeout, _eject_for,
             _resolve_interval)
BACKEND_KEYS = {"url": parse_backend_url, "weight": _integer(0), "backup": _boolean,
                "resolve": _resolve_interval, "srv": _srv_name, "scheme": _choice("http", "https"),
                "max_conns": _integer(0)}
TLS_SCALARS: dict[str, Callable[[Any], Any]] = {
    "min_version": _tls_version, "redirect_from": _port, "hsts": parse_duration,
}
TLS_KEYS = ("certificates", *TLS_SCALARS)
CERTIFICATE_KEYS = ("cert", "key")
TOP_LEVEL_KEYS = ("backends", "routes", *SCALARS, *SECTIONS, "tls")
# What a route may set for its own pool, over the top level's value. The client timeouts
# are the connection's, read before any route is known: not per route.
POOL_SCALARS = ("policy", "hash_key", "slow_start", "request_buffering")
POOL_SECTIONS = ("health_check", "passive_health", "retries", "timeouts", "queue", "sticky",
                 "rate_limit")
ROUTE_ONLY_TIMEOUTS = ("connect", "read", "tunnel_idle")
# Settings whose value is a secret: `--check` and the reload log say only whether it is set
# or changed, never the value.
SECRETS = ("admin.token", "sticky.secret")
POOL_KEYS = (*POOL_SCALARS, *(f"{section}.{key}" for section in POOL_SECTIONS
                              for key in SECTIONS[section][1]))
ROUTE_KEYS = ("name", "host", "path", "strip_prefix", "backends", *POOL_SCALARS, *POOL_SECTIONS)
_ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
                        r"|^\[[0-9a-f:.]+\]$")
