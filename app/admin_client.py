"""``python wsgi.py --admin ...``: the admin API (SPEC §9) from an operator's shell.

::

    python wsgi.py --admin list                       # every backend and its admin state
    python wsgi.py --admin drain  [ROUTE] BACKEND     # no new requests but sticky ones
    python wsgi.py --admin maint  [ROUTE] BACKEND     # no requests at all
    python wsgi.py --admin ready  [ROUTE] BACKEND     # back in rotation
    python wsgi.py --admin weight [ROUTE] BACKEND N   # N, or "configured" to undo
    python wsgi.py --admin reload                     # re-read the config, as SIGHUP does

It asks the proxy the config describes, on this machine (``app.liveness.connect``: its
port, ``$PORT`` when set, over TLS when the config has ``tls``), under its ``admin.prefix``,
with ``admin.token`` (``$MYPROXY_ADMIN_TOKEN``) when there is one. ROUTE is a route's name,
``default`` for the top-level pool, or left out when the config has no routes. Prints the
answer in one line per backend; exits 0 when the proxy did it, 1 when not (with why).
"""
from __future__ import annotations

import http.client
import json

from .config import Config
from .liveness import connect

TIMEOUT = 10.0         # a reload looks up new DNS names before it answers
STATES = ("drain", "maint", "ready")
USAGE = ("--admin list | drain|maint|ready [ROUTE] BACKEND | weight [ROUTE] BACKEND N|configured "
         "| reload")


class UsageError(ValueError):
    """The words after --admin do not make a command."""


def request_for(words: list[str]) -> tuple[str, str, dict | None]:
    """The method, API path and JSON body of a command. Raises ``UsageError``."""
    action, args = (words[0], words[1:]) if words else ("", [])
    if action == "list" and not args:
        return "GET", "/api/backends", None
    if action == "reload" and not args:
        return "POST", "/api/reload", {}
    if action in STATES and len(args) in (1, 2):
        return "PATCH", "/api/backends", {**_target(args), "state": action}
    if action == "weight" and len(args) in (2, 3):
        value = args[-1]
        if value == "configured":
            weight = None
        elif value.isdigit():
            weight = int(value)
        else:
            raise UsageError(f"weight: {value!r} is not a whole number or 'configured'")
        return "PATCH", "/api/backends", {**_target(args[:-1]), "weight": weight}
    raise UsageError(f"usage: python wsgi.py {USAGE}")


def _target(args: list[str]) -> dict:
    return {"route": args[0], "backend": args[1]} if len(args) == 2 else {"backend": args[0]}


def run(config: Config, words: list[str], timeout: float = TIMEOUT) -> tuple[bool, str]:
    """Send the command; whether the proxy did it, and what to print."""
    try:
        method, path, body = request_for(words)
    except UsageError as error:
        return False, str(error)
    connection, origin = connect(config, timeout)
    headers = {"Connection": "close", "Content-Type": "application/json"}
    if config.admin.token:
        headers["Authorization"] = f"Bearer {config.admin.token}"
    url = origin + config.admin.prefix + path
    try:
        connection.request(method, config.admin.prefix + path,
                           body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        status, raw = response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        return False, f"{url}: {error}"
    finally:
        connection.close()
    try:
        answer = json.loads(raw)
    except ValueError:
        return False, f"{url}: {status} {raw.decode('utf-8', 'replace').strip()}"
    if status != 200:
        return False, f"{url}: {status} {answer.get('error', '')}"
    if "backends" in answer:
        return True, "\n".join(describe(row) for row in answer["backends"])
    if "changed" in answer:
        kept = f" (needs a restart: {', '.join(answer['needs_restart'])})" \
            if answer["needs_restart"] else ""
        return True, f"reloaded: {'; '.join(answer['changed']) or 'no changes'}{kept}"
    return True, describe(answer)


def describe(row: dict) -> str:
    """One backend in one line."""
    weight = f"weight {row['weight']}" + ("" if row["admin_weight"] is None else " (set here)")
    return (f"{row['route']} {row['backend']} {row['admin_state']} {row['state']} {weight} "
            f"in_flight {row['in_flight']}")
