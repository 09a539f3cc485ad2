"""Loading: read the file, substitute, apply the environment overrides, validate every
key and assemble the ``Config`` (``load``, ``parse``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from .schema import CertificateFiles, Config, ConfigError, DEFAULT_PATH, TLSConfig
from .values import _port, _string
from .keys import CERTIFICATE_KEYS, SCALARS, SECTIONS, TLS_KEYS, TLS_SCALARS, TOP_LEVEL_KEYS
from .document import _Document, _checked, _suggest
from .pools import (_backends, _backends_from_env, _check_health, _check_sticky,
                    _default_health_timeout)
from .routes import _routes


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


def _check_consistency(document: _Document, config: Config) -> None:
    _check_health(document, config.health_check, (), config.origins)
    _check_sticky(document, config.sticky, (), config.origins)
    if config.backends and not any(b.weight > 0 for b in config.backends):
        raise document.error(("backends",), "at least one backend needs a weight above 0")
    if config.tls is not None and config.tls.redirect_from and \
            config.tls.redirect_from == config.port:
        raise document.error(("tls", "redirect_from"), "must not be the TLS `port` itself")
