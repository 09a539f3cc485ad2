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
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

DEFAULT_PATH = "config/config.yaml"

POLICIES = ("round_robin", "least_connections", "random_two", "hash")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


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
    weight: int = 1        # 0 = drained: no new requests
    backup: bool = False   # used only while no other backend is healthy


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
class AdminConfig:
    prefix: str = "/_myproxy"
    token: str = ""


@dataclass(frozen=True)
class Config:
    backends: tuple[BackendConfig, ...]
    port: int = 8080
    host: str = "0.0.0.0"
    policy: str = "round_robin"
    hash_key: str = "client_ip"
    health_check: HealthCheckConfig = HealthCheckConfig()
    passive_health: PassiveHealthConfig = PassiveHealthConfig()
    slow_start: float = 0.0
    retries: RetriesConfig = RetriesConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    forwarded: ForwardedConfig = ForwardedConfig()
    shutdown_timeout: float = 25.0
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = True
    server_timing: bool = True   # add a Server-Timing header naming the backend to responses
    admin: AdminConfig = AdminConfig()
    # Where the config came from, and where each effective value came from
    # ("file", "env NAME", "default"), for `--check` and the status page.
    source: str = ""
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


class ConfigHolder:
    """The config in force. A reload (``App.reload``) replaces ``config`` whole; the parts
    that serve keep the holder and read ``holder.config`` at each use, never a copy taken
    when they were built, so a reload reaches all of them at once."""

    def __init__(self, config: Config):
        self.config = config


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
SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "health_check": (HealthCheckConfig, {
        "enabled": _boolean, "path": _path, "interval": parse_duration,
        "timeout": parse_duration, "rise": _integer(1), "fall": _integer(1), "expect": _expect,
    }),
    "passive_health": (PassiveHealthConfig, {"failures": _integer(0), "eject_for": parse_duration}),
    "retries": (RetriesConfig, {"attempts": _integer(1), "budget": _share}),
    "timeouts": (TimeoutsConfig, {
        "connect": parse_duration, "read": parse_duration,
        "client_header": parse_duration, "client_idle": parse_duration,
        "tunnel_idle": parse_duration,
    }),
    "limits": (LimitsConfig, {
        "max_header_bytes": parse_size, "max_body_bytes": parse_size,
        "max_connections": _integer(1),
    }),
    "forwarded": (ForwardedConfig, {"trusted_proxies": _cidrs, "preserve_host": _boolean}),
    "admin": (AdminConfig, {"prefix": _admin_prefix, "token": _string}),
}

SCALARS: dict[str, Callable[[Any], Any]] = {
    "port": _port, "host": _string, "policy": _choice(*POLICIES), "hash_key": _hash_key,
    "slow_start": parse_duration, "shutdown_timeout": parse_duration,
    "log_level": _choice(*LOG_LEVELS), "log_format": _choice(*LOG_FORMATS),
    "access_log": _boolean, "server_timing": _boolean,
}

BACKEND_KEYS = {"url": parse_backend_url, "weight": _integer(0), "backup": _boolean}

TOP_LEVEL_KEYS = ("backends", *SCALARS, *SECTIONS)


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

    if environ.get("MYPROXY_BACKENDS"):
        backends = _backends_from_env(path, environ["MYPROXY_BACKENDS"])
        origins["backends"] = "env MYPROXY_BACKENDS"
        origins.update({f"backends[{index}]": "env MYPROXY_BACKENDS"
                        for index in range(len(backends))})
    else:
        if "backends" not in data:
            raise document.error(("backends",), "is required: list at least one backend URL")
        backends = _backends(document, data["backends"])
        origins["backends"] = origin(("backends",))
        origins.update({f"backends[{index}]": origin(("backends", index))
                        for index in range(len(backends))})
    values["backends"] = backends

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
    parser = SECTIONS[section][1].get(name) if section in SECTIONS else SCALARS.get(key)
    if isinstance(value, bool):
        return "true" if value else "false"
    if parser is parse_duration:
        return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"
    if parser is parse_size:
        for unit, factor in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
            if value and value % factor == 0:
                return f"{value // factor}{unit}"
        return str(value)
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


def _backends(document: _Document, raw: Any) -> tuple[BackendConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise document.error(("backends",), "expected a non-empty list of backend URLs")
    backends = []
    for index, item in enumerate(raw):
        keypath = ("backends", index)
        if isinstance(item, dict):
            for key in item:
                if key not in BACKEND_KEYS:
                    raise document.error(keypath + (key,), "unknown key" + _suggest(key, BACKEND_KEYS),
                                         at_key=True)
            if "url" not in item:
                raise document.error(keypath, "a backend written as a mapping needs a `url`")
            fields = {key: _checked(document, keypath + (key,), BACKEND_KEYS[key], value)
                      for key, value in item.items()}
            backends.append(BackendConfig(**fields))
        else:
            backends.append(BackendConfig(_checked(document, keypath, parse_backend_url, item)))
    _check_unique(document, backends)
    return tuple(backends)


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


def _check_unique(document: _Document, backends: list[BackendConfig]) -> None:
    seen = set()
    for index, backend in enumerate(backends):
        if backend.url in seen:
            raise document.error(("backends", index), f"{backend.url} is listed twice")
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
    health = config.health_check
    if health.enabled and health.timeout > health.interval > 0:
        interval = format_value("health_check.interval", health.interval)
        line = document.locate(("health_check", "interval"))[0] \
            if config.origins.get("health_check.interval", "default") != "default" else None
        where = f"line {line}" if line is not None else "its default"
        raise document.error(("health_check", "timeout"),
                             f"must not be longer than health_check.interval ({interval}, {where})")
    if health.enabled and health.interval <= 0:
        raise document.error(("health_check", "interval"), "must be more than 0")
    if not any(b.weight > 0 for b in config.backends):
        raise document.error(("backends",), "at least one backend needs a weight above 0")
