"""Run the proxy under each server it supports: ``python wsgi.py`` and gunicorn's gevent worker.

``launch(kind, config_path)`` starts one and waits until it accepts connections; wire tests
parametrize over ``SERVERS`` so every behaviour is proved under both.
"""
from __future__ import annotations

import os
import sys

from tests.backends import free_port, wait_until
from tests.conftest import ProxyProcess
from tests.wire import connect

SERVERS = ("wsgi.py", "gunicorn")
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")


def launch(kind: str, config_path: str) -> ProxyProcess:
    if kind == "wsgi.py":
        return ProxyProcess([sys.executable, "wsgi.py", "--config", config_path]).wait_listening()
    port = free_port()
    process = ProxyProcess([GUNICORN, "-k", "gevent", "wsgi:application"],
                           env={"MYPROXY_CONFIG": config_path, "PORT": str(port)})
    process.wait_for(r"Booting worker")
    process.port = port
    if not wait_until(lambda: _accepts(port), timeout=10):
        process.stop()
        raise AssertionError(f"gunicorn does not accept on {port}:\n{process.output}")
    return process


def _accepts(port: int) -> bool:
    try:
        connect(port, timeout=1).close()
        return True
    except OSError:
        return False
