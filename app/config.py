"""Configuration: load ``config/config.yaml`` and the environment into frozen dataclasses.

Owns the schema (every key, its type, its default), parsing of durations and sizes,
``${VAR}`` substitution, the environment overrides, and error messages that name the
file, the key path, and the line. It knows nothing about serving or proxying: values
computed at run time never come back here.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import yaml

DEFAULT_PATH = "config/config.yaml"

POLICIES = ("round_robin", "least_connections", "random_two", "hash")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
TLS_VERSIONS = ("1.2", "1.3")


class ConfigError(Exception):
    """A configuration problem, located as precisely as YAML allows.

    ``str(error)`` reads ``FILE:LINE:COLUMN: KEY.PATH: what is wrong``.
    """

    def __init__(self, message: str, file: str = "", key: str = "", line: int | None = None,
                 column: int | None = None):
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.key + ': ' if self.key else ''}{self.message}"


# --- value objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendConfig:
    url: str               # as written in the config: the backend's name in logs and metrics
                           # (for `srv`: SCHEME://SRV-NAME)
    weight: int = 1        # 0 = drained: no new requests
    backup: bool = False   # used only while no other backend is healthy
    resolve: float = 0.0   # > 0: a name looked up this often; each address is a member
    srv: str = ""          # an SRV name: members' targets, ports and weights from its records
    max_conns: int = 0     # requests (and open tunnels) in flight to it at most; 0 = no cap

    @property
    def discovered(self) -> bool:
        """Members come from DNS (``app.lb.discovery``): this entry is a template, not a backend."""
        return self.resolve > 0


@dataclass(frozen=True)
class HealthCheckConfig:
    enabled: bool = True
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    expect: tuple[tuple[int, int], ...] = ((200, 399),)

    def passes(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.expect)


@dataclass(frozen=True)
class PassiveHealthConfig:
    failures: int = 3
    eject_for: float = 10.0


@dataclass(frozen=True)
class RetriesConfig:
    attempts: int = 2
    budget: float = 0.2


@dataclass(frozen=True)
class QueueConfig:
    """Where a request waits while every eligible backend of its pool is at ``max_conns``."""
    size: int = 100        # requests waiting in the pool at most; 0 = no queue (503 at once)
    timeout: float = 10.0  # the longest wait, then 503 with Retry-After


@dataclass(frozen=True)
class TimeoutsConfig:
    connect: float = 3.0
    read: float = 30.0
    client_header: float = 10.0
    client_idle: float = 60.0
    tunnel_idle: float = 3600.0   # an upgraded connection with no bytes either way is closed; 0 = never


@dataclass(frozen=True)
class LimitsConfig:
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 0
    max_connections: int = 10000


@dataclass(frozen=True)
class RateLimitConfig:
    """A pool's request rate limit (GCRA, ``app.lb.ratelimit``): ``rate`` requests a second
    (0 = off), ``burst`` more at once above it, counted per ``key``."""
    rate: float = 0.0              # requests per second, from "100/s", "6000/m", "1000/h"
    burst: int = 0
    key: str = "client_ip"         # client_ip | header:NAME | route


@dataclass(frozen=True)
class ForwardedConfig:
    trusted_proxies: tuple = ()
    preserve_host: bool = True

    def trusts(self, address: str) -> bool:
        if not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)


@dataclass(frozen=True)
class ResolverConfig:
    servers: tuple[str, ...] = ()   # "host:port", tried in order; empty = /etc/resolv.conf
    timeout: float = 2.0            # one lookup, every server tried included


@dataclass(frozen=True)
class AdminConfig:
    prefix: str = "/_myproxy"
    token: str = ""


@dataclass(frozen=True)
class StickyConfig:
    """Sticky sessions (SPEC §8): a cookie naming the backend that answered a client."""
    cookie: str = ""          # the cookie's name; "" = off
    max_age: float = 0.0      # seconds; 0 = a session cookie
    secure: str = "auto"      # auto (Secure when the client came over TLS) | true | false
    http_only: bool = True
    same_site: str = "lax"    # lax | strict | none
    path: str = "/"           # the cookie's Path, whatever the route's path or strip_prefix
    secret: str = ""          # keys the backend ids; "" = a built-in key (ids still opaque)

    @property
    def enabled(self) -> bool:
        return bool(self.cookie)


@dataclass(frozen=True)
class RouteConfig:
    """One pool's settings: a route of ``routes:``, or the default pool (``backends:``).

    The per-pool settings are the effective ones: the route's own, else the top level's,
    else the default; ``origins`` says which, per key, for ``--check``.
    """

    name: str                          # [a-z0-9][a-z0-9_-]*; "default" is the top-level pool
    backends: tuple[BackendConfig, ...]
    hosts: tuple[str, ...] = ()        # lowercased names or "*.suffix" wildcards; () = any host
    path: str = ""                     # a raw prefix, without a trailing "/"; "" = any path
    strip_prefix: bool = False
    policy: str = "round_robin"
    hash_key: str = "client_ip"
    health_check: HealthCheckConfig = HealthCheckConfig()
    passive_health: PassiveHealthConfig = PassiveHealthConfig()
    slow_start: float = 0.0
    retries: RetriesConfig = RetriesConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    request_buffering: int = 0         # bytes of a chunked body read whole and sent with a length
    queue: QueueConfig = QueueConfig()
    sticky: StickyConfig = StickyConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    line: int | None = None            # where the route is written in the file
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


DEFAULT_ROUTE = "default"   # the name of the top-level pool in logs, metrics and /status
NO_ROUTE = "-"              # the route of a request that no route matched


@dataclass(frozen=True)
class CertificateFiles:
    """One certificate of ``tls.certificates``: its files (absolute; a relative path in the
    file is taken from the config file's folder) and where each was written, for errors."""
    cert: str              # PEM chain, leaf first
    key: str               # PEM private key
    index: int = 0
    cert_line: int | None = field(default=None, compare=False)
    key_line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TLSConfig:
    certificates: tuple[CertificateFiles, ...]   # SNI picks by their names; the first is the default
    min_version: str = "1.2"
    redirect_from: int = 0     # a plain-HTTP port answering 308 to https://; 0 = none
    hsts: float = 0.0          # Strict-Transport-Security max-age in seconds; 0 = no header


@dataclass(frozen=True)
class Config:
    backends: tuple[BackendConfig, ...]     # the default pool; may be empty when routes exist
    port: int = 8080
    host: str = "0.0.0.0"
    policy: str = "round_robin"
    hash_key: str = "client_ip"
    health_check: HealthCheckConfig = HealthCheckConfig()
    passive_health: PassiveHealthConfig = PassiveHealthConfig()
    slow_start: float = 0.0
    retries: RetriesConfig = RetriesConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    # A chunked request body is read whole, up to this many bytes (413 past it), and sent with
    # Content-Length, for backends that read only a length (nginx's proxy_request_buffering).
    # 0: it streams upstream chunked, as it arrives.
    request_buffering: int = 0
    queue: QueueConfig = QueueConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    limits: LimitsConfig = LimitsConfig()
    sticky: StickyConfig = StickyConfig()
    forwarded: ForwardedConfig = ForwardedConfig()
    shutdown_delay: float = 0.0    # after SIGTERM: go on accepting this long, /health 503
    shutdown_timeout: float = 25.0
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = True
    server_timing: bool = True   # add a Server-Timing header (upstream and total time)
    # Answers to clients may name backends: error bodies give the backend and its failure,
    # Server-Timing the backend's URL. Off: they say the status, route and request ID only.
    expose_backends: bool = False
    admin: AdminConfig = AdminConfig()
    tls: TLSConfig | None = None   # None: plain HTTP
    resolver: ResolverConfig = ResolverConfig()
    routes: tuple[RouteConfig, ...] = ()
    # Several instances sharing state through Redis (SPEC §10); its block is below SECTIONS.
    cluster: ClusterConfig = field(default_factory=lambda: ClusterConfig())
    # Where the config came from, and where each effective value came from
    # ("file", "env NAME", "default"), for `--check` and the status page.
    source: str = ""
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def default_route(self) -> RouteConfig | None:
        """The top-level pool as a route (any host, any path), or None without ``backends``."""
        if not self.backends:
            return None
        origins = {key: self.origins.get(key, "default") for key in POOL_KEYS}
        return RouteConfig(DEFAULT_ROUTE, self.backends, policy=self.policy,
                           hash_key=self.hash_key, health_check=self.health_check,
                           passive_health=self.passive_health, slow_start=self.slow_start,
                           retries=self.retries, timeouts=self.timeouts, queue=self.queue,
                           sticky=self.sticky, rate_limit=self.rate_limit,
                           request_buffering=self.request_buffering, origins=origins)

    @property
    def pools(self) -> tuple[RouteConfig, ...]:
        """Every pool's settings: the routes as written, then the default pool if any."""
        default = self.default_route
        return self.routes + ((default,) if default is not None else ())


# --- scalar parsers -------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}
_NUMBER_WITH_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``2``, ``0.5``, ``"500ms"``, ``"2s"``, ``"1m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2, 0.5, \"500ms\", \"2s\" or \"1m\"")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _NUMBER_WITH_UNIT.match(str(value))
        if not match or match.group(2).lower() not in _DURATION_UNITS:
            raise ValueError(f"{value!r} is not a duration (use a number of seconds, or "
                             "a number with ms, s, m or h)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``1024``, ``"64KiB"``, ``"10MiB"``, ``"1GB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 65536 or \"64KiB\"")
    if isinstance(value, int):
        size = value
    else:
        match = _NUMBER_WITH_UNIT.match(str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size (use bytes, or a number with "
                             "KiB, MiB, GiB, KB, MB or GB)")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if size < 0:
        raise ValueError("must not be negative")
    return size


def _integer(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    return parse


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


_LISTEN_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+").fullmatch


def _listen_host(value: Any) -> str:
    """``host``: an IP address, or a name this machine resolves (looked up here, once, so
    that a typo is a config error and not a failure to listen)."""
    host = _string(value).strip()
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _LISTEN_NAME(host):
        raise ValueError(f"{value!r} is not an IP address or a host name to listen on (such as "
                         "0.0.0.0, ::, 127.0.0.1 or localhost; the port goes in `port`)")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"{value!r} is not an IP address, and this machine cannot resolve "
                         f"it ({error.strerror or error})") from None
    return host


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {value!r}")
        return value
    return parse


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def _port(value: Any) -> int:
    port = _integer(0)(value)
    if port > 65535:
        raise ValueError("must be a TCP port, 0 to 65535")
    return port


def _path(value: Any) -> str:
    value = _string(value)
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return value


# RFC 6265 §4.1.1: a cookie-name is an RFC 2616 token.
_COOKIE_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _cookie_name(value: Any) -> str:
    """``sticky.cookie``: a cookie name (an RFC 6265 token), or "" for off."""
    name = _string(value)
    if name and not _COOKIE_NAME.match(name):
        raise ValueError(f"{name!r} is not a cookie name (letters, digits and !#$%&'*+.^_`|~-)")
    return name


def _secure(value: Any) -> str:
    """``sticky.secure``: auto, true or false, kept as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value not in ("auto", "true", "false"):
        raise ValueError(f"expected auto, true or false; got {value!r}")
    return value


def _cookie_path(value: Any) -> str:
    path = _path(value)
    if ";" in path or not path.isprintable() or " " in path:
        raise ValueError(f"{value!r}: a cookie path has no ';', space or control character")
    return path


def _admin_prefix(value: Any) -> str:
    prefix = _path(value).rstrip("/")
    if not prefix:
        raise ValueError("must be a path below '/', such as /_myproxy: '/' would hide every "
                         "request from the backends")
    return prefix


def _hash_key(value: Any) -> str:
    value = _string(value)
    if value in ("client_ip", "path") or re.match(r"^(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+$", value):
        return value
    raise ValueError(f"expected client_ip, path, header:NAME or cookie:NAME; got {value!r}")


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


def _rate(value: Any) -> float:
    """Requests per second from ``"100/s"``, ``"6000/m"``, ``"1000/h"``; 0 = off."""
    if not isinstance(value, bool) and str(value).strip() in ("0", "0.0"):
        return 0.0
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if not match or match.group(2) not in _RATE_UNITS:
        raise ValueError(f"{value!r} is not a rate: write requests per unit, such as \"100/s\", "
                         "\"6000/m\" or \"1000/h\" (0 = off)")
    return float(match.group(1)) / _RATE_UNITS[match.group(2)]


def _rate_key(value: Any) -> str:
    value = _string(value)
    if value in ("client_ip", "route") or re.match(r"^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$", value):
        return value
    raise ValueError(f"expected client_ip, header:NAME or route; got {value!r}")


def _expect(value: Any) -> tuple[tuple[int, int], ...]:
    """``200``, ``"200-399"``, ``"200,204,300-399"`` or a list of those."""
    items = value if isinstance(value, list) else str(value).split(",")
    ranges = []
    for item in items:
        text = str(item).strip()
        match = re.match(r"^(\d{3})(?:\s*-\s*(\d{3}))?$", text)
        if not match:
            raise ValueError(f"expected statuses like 200, \"200-399\" or \"200,204\"; got {value!r}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 100 <= low <= high <= 599:
            raise ValueError(f"{text!r} is not a range of HTTP statuses")
        ranges.append((low, high))
    return tuple(ranges)


def _cidrs(value: Any) -> tuple:
    if not isinstance(value, list):
        raise ValueError("expected a list of addresses or CIDRs, such as [\"10.0.0.0/8\"]")
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _dns_servers(value: Any) -> tuple[str, ...]:
    """``["127.0.0.1:8600", "[::1]:53", "10.0.0.2"]`` (port 53 by default), as host:port."""
    if not isinstance(value, list):
        raise ValueError('expected a list of "address:port", such as ["127.0.0.1:8600"]')
    servers = []
    for item in value:
        text = str(item).strip()
        host, port = text, "53"
        if text.startswith("[") and "]" in text:            # [v6] or [v6]:port
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else (rest or "53")
        elif text.count(":") == 1:                          # v4:port
            host, port = text.split(":")
        try:
            address = ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address with an optional port (a "
                             'resolver is given by address: "127.0.0.1:8600", "[::1]:53")') from None
        if not 0 < number <= 65535:
            raise ValueError(f"{item!r}: the port must be 1 to 65535")
        servers.append(f"[{address}]:{number}" if address.version == 6 else f"{address}:{number}")
    return tuple(servers)


def _resolve_interval(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < MIN_RESOLVE:
        raise ValueError(f"must be at least {MIN_RESOLVE:g}s")
    return seconds


def _above_zero(instead: str = "") -> Callable[[Any], float]:
    """A duration where 0 has no meaning of its own (a timeout of 0 would give up at once),
    refused with what to write ``instead``. Where 0 does mean something ("off", "none",
    "never"), the key takes ``parse_duration`` and its README line says what."""
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError("must be more than 0" + (f" ({instead})" if instead else ""))
        return seconds
    return parse


_positive_duration = _above_zero()
# A timeout of 0 is not "no limit" here: every wait would end at once.
_timeout = _above_zero("0 is not 'no limit': for a long wait, write a long duration such as 1h")
_check_timeout = _above_zero("to turn health checks off: health_check.enabled: false")
_eject_for = _above_zero("to turn passive health checks off: passive_health.failures: 0")


def _tls_version(value: Any) -> str:
    value = f"{value:.1f}" if isinstance(value, float) else value   # 1.2 unquoted is a float
    return _choice(*TLS_VERSIONS)(value)


def _srv_name(value: Any) -> str:
    name = _string(value).strip().rstrip(".")
    if not re.match(r"^_[A-Za-z0-9-]+\._(tcp|udp)(\.[A-Za-z0-9_-]+)+$", name):
        raise ValueError(f"{value!r} is not an SRV name such as _http._tcp.api.service.consul")
    return name


def parse_backend_url(value: Any) -> str:
    url = _string(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r}: a backend URL has no query, fragment or credentials")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return url


# --- schema ---------------------------------------------------------------------------------

# Each section maps a key to its parser; the defaults come from the dataclasses above.

# --- cluster: several instances sharing state through Redis (SPEC §10) ------------------------
# One block (dataclass, parsers, section), so that it moves as one.

@dataclass(frozen=True)
class ClusterConfig:
    """``redis``: a ``redis://`` or ``rediss://`` URL ("" = no cluster: each instance stands
    alone); ``prefix``: the keys' prefix; ``timeout``: the most a request waits on Redis."""

    redis: str = field(default="", repr=False)      # its password must never be shown
    prefix: str = "myproxy"
    timeout: float = 0.05

    @property
    def enabled(self) -> bool:
        return bool(self.redis)


_REDIS_SCHEMES = ("redis://", "rediss://")
_CLUSTER_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _redis_url(value: Any) -> str:
    value = _string(value).strip()
    if value and not value.startswith(_REDIS_SCHEMES):
        raise ValueError("must be a redis:// or rediss:// URL, or \"\" for no cluster")
    if value and not urlsplit(value).hostname:
        raise ValueError("the URL names no host")
    return value


def _cluster_prefix(value: Any) -> str:
    value = _string(value)
    if not _CLUSTER_PREFIX.match(value):
        raise ValueError("must be 1 to 64 letters, digits, or _ . : -")
    return value


def redact_url(url: str) -> str:
    """``url`` with any password in it replaced by ``***``: what a log, ``--check`` or
    ``/status`` may show of a Redis URL."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_CLUSTER_SECTION = (ClusterConfig, {"redis": _redis_url, "prefix": _cluster_prefix,
                                    "timeout": _positive_duration})

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
    "cluster": _CLUSTER_SECTION,
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
MIN_RESOLVE = 1.0          # seconds: the shortest re-resolve interval, whatever the TTL says
DEFAULT_SRV_RESOLVE = 10.0  # an `srv` entry without `resolve`

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


# --- YAML with positions --------------------------------------------------------------------

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Document:
    """A YAML document as plain values plus the position of every key path."""

    def __init__(self, path: str, text: str, environ: Mapping[str, str]):
        self.path = path
        self.environ = environ
        self.marks: dict[tuple, tuple[int, int]] = {}       # where each value starts
        self.key_marks: dict[tuple, tuple[int, int]] = {}   # where each key is written
        # key path -> the ${VAR} references in its value: [(name, taken from the environment)]
        self.substituted: dict[tuple, list[tuple[str, bool]]] = {}
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data = self._build(loader, node, ()) if node is not None else None
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            problem = " ".join(filter(None, [error.context, error.problem]))
            raise ConfigError(f"invalid YAML: {problem}", path,
                              line=mark.line + 1 if mark else None,
                              column=mark.column + 1 if mark else None) from None
        except yaml.YAMLError as error:
            raise ConfigError(f"invalid YAML: {error}", path) from None
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, keypath: tuple) -> Any:
        self.marks[keypath] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                if not isinstance(key, str):
                    raise self.error(keypath, f"keys must be strings, got {key!r}", key_node)
                if key in result:
                    raise self.error(keypath + (key,), "appears twice", key_node)
                self.key_marks[keypath + (key,)] = (key_node.start_mark.line + 1,
                                                    key_node.start_mark.column + 1)
                result[key] = self._build(loader, value_node, keypath + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, keypath + (index,))
                    for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str" \
                and "${" in node.value:
            text = self._substitute(node.value, keypath, node)
            if node.style is None:   # unquoted: let the result be a number or a boolean
                tag = loader.resolve(yaml.ScalarNode, text, (True, False))
                node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark)
            else:
                node = yaml.ScalarNode(node.tag, text, node.start_mark, node.end_mark, node.style)
        return loader.construct_object(node, deep=True)

    def _substitute(self, text: str, keypath: tuple, node: yaml.Node) -> str:
        references = self.substituted.setdefault(keypath, [])

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise self.error(keypath, f"environment variable {name} is not set "
                                     f"(write ${{{name}:-default}} to give a default)", node)
                references.append((name, False))
                return default
            references.append((name, True))
            return value
        return _ENV_REFERENCE.sub(replace, text)

    def origin(self, keypath: tuple) -> str:
        """Where the value at ``keypath`` came from: ``file``, plus any ``${VAR}`` in it."""
        notes = []
        for path, references in self.substituted.items():
            if path[:len(keypath)] == keypath:
                notes += [f"env {name}" if from_env else f"default of ${{{name}}}"
                          for name, from_env in references]
        return ", ".join(["file", *dict.fromkeys(notes)])

    def error(self, keypath: tuple, message: str, node: yaml.Node | None = None,
              at_key: bool = False) -> ConfigError:
        if node is not None:
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
        elif at_key and keypath in self.key_marks:
            line, column = self.key_marks[keypath]
        else:
            line, column = self.locate(keypath)
        return ConfigError(message, self.path, format_keypath(keypath), line, column)

    def locate(self, keypath: tuple) -> tuple[int | None, int | None]:
        while keypath not in self.marks and keypath:
            keypath = keypath[:-1]
        return self.marks.get(keypath, (None, None))


def format_keypath(keypath: tuple) -> str:
    text = ""
    for part in keypath:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


# --- loading --------------------------------------------------------------------------------


def resolve_path(path: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The config file to read: the argument, else ``MYPROXY_CONFIG``, else the default."""
    environ = os.environ if environ is None else environ
    return path or environ.get("MYPROXY_CONFIG") or DEFAULT_PATH


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute, override from the environment, and validate. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    path = resolve_path(path, environ)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read the config file: {error.strerror}", path) from None
    return parse(text, path, environ)


def parse(text: str, path: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate a YAML text as a config (see ``load``)."""
    environ = os.environ if environ is None else environ
    document = _Document(path, text, environ)
    data = document.data if document.data is not None else {}
    if not isinstance(data, dict):
        raise document.error((), "the config must be a mapping of keys to values")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise document.error((key,), "unknown key" + _suggest(key, TOP_LEVEL_KEYS),
                                 at_key=True)

    origins: dict[str, str] = {}
    origin = document.origin

    values: dict[str, Any] = {}
    for key, parse_value in SCALARS.items():
        if key in data:
            values[key] = _checked(document, (key,), parse_value, data[key])
            origins[key] = origin((key,))
        else:
            origins[key] = "default"

    for section, (cls, parsers) in SECTIONS.items():
        raw = data.get(section)
        if raw is None:
            values[section] = cls()
            origins.update({f"{section}.{key}": "default" for key in parsers})
            continue
        if not isinstance(raw, dict):
            raise document.error((section,), "expected a mapping of keys to values")
        fields = {}
        for key, value in raw.items():
            if key not in parsers:
                raise document.error((section, key), "unknown key" + _suggest(key, parsers),
                                     at_key=True)
            fields[key] = _checked(document, (section, key), parsers[key], value)
        for key in parsers:
            origins[f"{section}.{key}"] = origin((section, key)) if key in fields else "default"
        values[section] = cls(**fields)

    routes_raw = data.get("routes")
    if environ.get("MYPROXY_BACKENDS"):
        backends = _backends_from_env(path, environ["MYPROXY_BACKENDS"])
        origins["backends"] = "env MYPROXY_BACKENDS"
        origins.update({f"backends[{index}]": "env MYPROXY_BACKENDS"
                        for index in range(len(backends))})
    else:
        if "backends" not in data and not routes_raw:
            raise document.error(("backends",), "is required: list at least one backend URL "
                                 "(or give `routes`)")
        backends = _backends(document, data["backends"]) if "backends" in data else ()
        origins["backends"] = origin(("backends",)) if backends else "none"
        origins.update({f"backends[{index}]": origin(("backends", index))
                        for index in range(len(backends))})
    values["backends"] = backends
    if data.get("tls") is not None:
        values["tls"] = _tls(document, data["tls"])
        origins.update({f"tls.{key}": origin(("tls", key)) if key in data["tls"] else "default"
                        for key in TLS_KEYS})
    if routes_raw is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(Config)
                    if f.default is not dataclasses.MISSING}
        values["routes"] = _routes(document, routes_raw, {**defaults, **values}, origins)

    if environ.get("PORT"):
        try:
            values["port"] = _port(int(environ["PORT"]))
        except ValueError:
            raise ConfigError(f"environment variable PORT={environ['PORT']!r} is not a TCP port",
                              path, "port") from None
        origins["port"] = "env PORT"
    if environ.get("MYPROXY_ADMIN_TOKEN"):
        values["admin"] = dataclasses.replace(values["admin"], token=environ["MYPROXY_ADMIN_TOKEN"])
        origins["admin.token"] = "env MYPROXY_ADMIN_TOKEN"

    values["health_check"] = _default_health_timeout(values["health_check"], origins)
    config = Config(source=os.path.abspath(path) if path != "<config>" else path,
                    origins=origins, **values)
    _check_consistency(document, config)
    return config


def format_value(key: str, value: Any) -> str:
    """A setting as a user would write it in the file: ``5s``, ``200ms``, ``64KiB``, ``200-399``."""
    section, _, name = key.rpartition(".")
    parser = SECTIONS[section][1].get(name) if section in SECTIONS else \
        TLS_SCALARS.get(name) if section == "tls" else SCALARS.get(key)
    if isinstance(value, bool):
        return "true" if value else "false"
    if parser is _redis_url:
        return redact_url(value)          # never a password
    if parser in DURATIONS:
        return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"
    if parser is parse_size:
        for unit, factor in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
            if value and value % factor == 0:
                return f"{value // factor}{unit}"
        return str(value)
    if parser is _rate:
        for unit, factor in _RATE_UNITS.items():      # the largest unit-free count: 6000/m
            count = value * factor
            if value and abs(count - round(count)) < 1e-6:
                return f"{round(count)}/{unit}"
        return f"{value:g}/s" if value else "0"
    if parser is _expect:
        return ",".join(f"{low}-{high}" if low != high else str(low) for low, high in value)
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def _checked(document: _Document, keypath: tuple, parse_value: Callable, value: Any) -> Any:
    try:
        return parse_value(value)
    except ValueError as error:
        raise document.error(keypath, str(error)) from None


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


def _tls(document: _Document, raw: Any) -> TLSConfig:
    if not isinstance(raw, dict):
        raise document.error(("tls",), "expected a mapping with `certificates`")
    for key in raw:
        if key not in TLS_KEYS:
            raise document.error(("tls", key), "unknown key" + _suggest(key, TLS_KEYS), at_key=True)
    listed = raw.get("certificates")
    if not isinstance(listed, list) or not listed:
        raise document.error(("tls", "certificates"),
                             "expected a non-empty list of {cert: FILE, key: FILE}")
    folder = os.path.dirname(os.path.abspath(document.path)) if document.path != "<config>" \
        else os.getcwd()
    certificates = []
    for index, item in enumerate(listed):
        keypath = ("tls", "certificates", index)
        if not isinstance(item, dict):
            raise document.error(keypath, "expected a mapping {cert: FILE, key: FILE}")
        for key in item:
            if key not in CERTIFICATE_KEYS:
                raise document.error(keypath + (key,), "unknown key" +
                                     _suggest(key, CERTIFICATE_KEYS), at_key=True)
        files = {}
        for key in CERTIFICATE_KEYS:
            if key not in item:
                raise document.error(keypath, f"needs a `{key}` file")
            value = _checked(document, keypath + (key,), _string, item[key])
            if not value.strip():
                raise document.error(keypath + (key,), "must name a file")
            files[key] = os.path.join(folder, os.path.expanduser(value))
        certificates.append(CertificateFiles(
            files["cert"], files["key"], index,
            cert_line=document.locate(keypath + ("cert",))[0],
            key_line=document.locate(keypath + ("key",))[0]))
    fields: dict[str, Any] = {"certificates": tuple(certificates)}
    for key, parse_value in TLS_SCALARS.items():
        if key in raw:
            fields[key] = _checked(document, ("tls", key), parse_value, raw[key])
    return TLSConfig(**fields)


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


def _check_consistency(document: _Document, config: Config) -> None:
    _check_health(document, config.health_check, (), config.origins)
    _check_sticky(document, config.sticky, (), config.origins)
    if config.backends and not any(b.weight > 0 for b in config.backends):
        raise document.error(("backends",), "at least one backend needs a weight above 0")
    if config.tls is not None and config.tls.redirect_from and \
            config.tls.redirect_from == config.port:
        raise document.error(("tls", "redirect_from"), "must not be the TLS `port` itself")


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


# --- routes ---------------------------------------------------------------------------------


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
