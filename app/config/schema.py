"""The schema: every setting as a frozen dataclass with its default, the fixed choices, and
the error type. What the rest of the app reads. No parsing, no I/O.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping


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
class ClusterConfig:
    """Several instances sharing state through Redis (SPEC §10). ``redis``: a ``redis://`` or
    ``rediss://`` URL ("" = no cluster: each instance stands alone); ``prefix``: the keys'
    prefix; ``timeout``: the most a request waits on Redis."""

    redis: str = field(default="", repr=False)      # its password must never be shown
    prefix: str = "myproxy"
    timeout: float = 0.05

    @property
    def enabled(self) -> bool:
        return bool(self.redis)


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
    cluster: ClusterConfig = ClusterConfig()   # several instances sharing state (SPEC §10)
    # Where the config came from, and where each effective value came from
    # ("file", "env NAME", "default"), for `--check` and the status page.
    source: str = ""
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def default_route(self) -> RouteConfig | None:
        """The top-level pool as a route (any host, any path), or None without ``backends``."""
        if not self.backends:
            return None
        from .keys import POOL_KEYS     # the tables build on these classes: imported late
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
