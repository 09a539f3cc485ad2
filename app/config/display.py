"""A setting as a user would write it in the file, for ``--check`` and the reload line.
"""
from __future__ import annotations

from typing import Any

from .values import _RATE_UNITS, _expect, _rate, _redis_url, parse_size, redact_url
from .keys import DURATIONS, SCALARS, SECTIONS, TLS_SCALARS


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
