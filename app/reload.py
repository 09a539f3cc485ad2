"""Hot reload, the pure part: which settings a running proxy can take, and what changed.

``App.reload`` applies a new config to a running proxy; this module only compares two
configs. ``fixed_at_start`` keeps what cannot change without a restart (the listening
address, and the connection limit that sizes the server's pool); ``changes`` says, one item
per setting, what a reload changes, for the log line. It knows nothing of serving.
"""
from __future__ import annotations

import dataclasses

from .config import Config, format_value

# Settings bound when the server starts: a reload keeps the running value and says so.
FIXED_AT_START = ("host", "port", "limits.max_connections")

# Settings that are not behaviour: where the file is and where each value came from.
NOT_SETTINGS = ("source", "origins", "backends")


def fixed_at_start(running: Config, new: Config,
                   also_fixed: tuple[str, ...] = ()) -> tuple[Config, list[str]]:
    """``new`` with the running values of ``FIXED_AT_START`` and of ``also_fixed`` (what the
    server running the app bound at its start, e.g. gunicorn's settings made from the
    config); and the keys it had to keep."""
    keys = FIXED_AT_START + tuple(key for key in also_fixed if key not in FIXED_AT_START)
    kept = [key for key in keys if _get(new, key) != _get(running, key)]
    origins = dict(new.origins)
    for key in keys:
        origins[key] = running.origins.get(key, "default")
        new = _replace(new, key.split("."), _get(running, key))
    return dataclasses.replace(new, origins=origins), kept


def _replace(value, path: list[str], replacement):
    """``value`` (a frozen dataclass) with the setting at ``path`` replaced."""
    if len(path) == 1:
        return dataclasses.replace(value, **{path[0]: replacement})
    inner = _replace(getattr(value, path[0]), path[1:], replacement)
    return dataclasses.replace(value, **{path[0]: inner})


def changes(old: Config, new: Config) -> list[str]:
    """What differs from ``old`` to ``new``: backends first, then each other setting."""
    items = []
    old_backends = {b.url: b for b in old.backends}
    new_backends = {b.url: b for b in new.backends}
    items += [f"+backend {url}" + (f" weight {b.weight}" if b.weight != 1 else "")
              + (" backup" if b.backup else "")
              for url, b in new_backends.items() if url not in old_backends]
    items += [f"-backend {url}" for url in old_backends if url not in new_backends]
    for url, backend in new_backends.items():
        before = old_backends.get(url)
        if before is None:
            continue
        if before.weight != backend.weight:
            items.append(f"{url} weight {before.weight}->{backend.weight}")
        if before.backup != backend.backup:
            items.append(f"{url} backup {format_value('backup', before.backup)}->"
                         f"{format_value('backup', backend.backup)}")
    if [b.url for b in old.backends] != [b.url for b in new.backends] and \
            set(old_backends) == set(new_backends):
        items.append("backends reordered")
    for key in _setting_keys(old):
        before, after = _get(old, key), _get(new, key)
        if before != after:
            shown = "(changed)" if key == "admin.token" else \
                f"{format_value(key, before)}->{format_value(key, after)}"
            items.append(f"{key} {shown}")
    return items


def _setting_keys(config: Config) -> list[str]:
    keys = []
    for field in dataclasses.fields(config):
        if field.name in NOT_SETTINGS:
            continue
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{field.name}.{inner.name}" for inner in dataclasses.fields(value)]
        else:
            keys.append(field.name)
    return keys


def _get(config: Config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value

