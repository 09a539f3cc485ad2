"""``python wsgi.py --alive``: whether the proxy a config describes is serving (liveness).

The image's ``HEALTHCHECK`` (and any probe that can run a command) asks
``{admin.prefix}/live`` of the proxy on this machine, where the config says it listens:
its ``port`` (``$PORT`` when set), over TLS when the config has ``tls``, on loopback when
``host`` is every address. ``/live`` answers 200 whenever the process serves, so neither
a backend outage nor a drain makes a platform replace a working proxy: that is
``/health``'s job, readiness. It knows nothing of how the proxy serves.
"""
from __future__ import annotations

import http.client
import ipaddress
import ssl

from .config import Config

TIMEOUT = 2.0        # seconds; under the HEALTHCHECK's own --timeout of 3s
LIVE_PATH = "/live"


def address(config: Config) -> tuple[str, int]:
    """Where to reach the proxy of ``config`` from this machine."""
    host = config.host
    try:
        if ipaddress.ip_address(host).is_unspecified:
            host = "::1" if ":" in host else "127.0.0.1"
    except ValueError:
        pass             # a name: it listens where the name points
    return host, config.port


def connect(config: Config, timeout: float = TIMEOUT) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the proxy of ``config`` on this machine, and its origin as shown in
    messages (``scheme://host:port``). Over TLS the certificate is not checked: it is the
    TLS checks' business (--check), and its names need not include the loopback address
    asked here."""
    host, port = address(config)
    scheme = "https" if config.tls is not None else "http"
    shown = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    if config.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=context), shown
    return http.client.HTTPConnection(host, port, timeout=timeout), shown


def alive(config: Config, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """One ``GET {prefix}/live``: whether it answered 200, and one line that says what
    was asked and what came back."""
    path = config.admin.prefix + LIVE_PATH
    connection, origin = connect(config, timeout)
    shown = origin + path
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return False, f"{shown}: {error}"
    finally:
        connection.close()
    return status == 200, f"{shown}: {status}"
