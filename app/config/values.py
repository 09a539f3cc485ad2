"""Parsers of single values: durations, sizes, rates, URLs, names, addresses.

Each takes what YAML gave and returns the typed value, or raises ``ValueError`` with a message
that says what to write instead; the loader adds the file, the key and the line.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from .schema import TLS_VERSIONS


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

MIN_RESOLVE = 1.0          # seconds: the shortest re-resolve interval, whatever the TTL says
DEFAULT_SRV_RESOLVE = 10.0  # an `srv` entry without `resolve`


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
