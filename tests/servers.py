"""Run the proxy under each server it supports: ``python wsgi.py``, gunicorn with MyProxy's
worker (the Procfile's command), and gunicorn's stock gevent worker (``-k gevent``).

``launch(kind, config_path)`` starts one and waits until it accepts connections; wire tests
parametrize over ``SERVERS`` so every behaviour is proved under both. ``serving(kind,
tmp_path_factory, config)`` is the whole life of one for a module's fixture.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import yaml

from tests.backends import free_port, wait_until
from tests.conftest import ProxyProcess
from tests.rawclient import connect

SERVERS = ("wsgi.py", "gunicorn", "gunicorn-gevent")
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
# The command line of each gunicorn kind; gunicorn.conf.py sets MyProxy's worker by default.
READY = "ready: SIGHUP reloads the config"      # each worker's line once it is set up
GUNICORN_ARGS = {"gunicorn": ["wsgi:application"],
                 "gunicorn-gevent": ["-k", "gevent", "wsgi:application"]}


def launch(kind: str, config_path: str, workers: int = 1) -> ProxyProcess:
    """``workers`` is gunicorn's ``WEB_CONCURRENCY`` (ignored by ``wsgi.py``)."""
    if kind == "wsgi.py":
        return ProxyProcess([sys.executable, "wsgi.py", "--config", config_path]).wait_listening()
    port = free_port()
    process = ProxyProcess([GUNICORN, *GUNICORN_ARGS[kind]],
                           env={"MYPROXY_CONFIG": config_path, "PORT": str(port),
                                "WEB_CONCURRENCY": str(workers)})
    process.wait_for(r"Booting worker")
    process.port = port
    # Each worker says it is ready once its SIGHUP and SIGTERM are MyProxy's: a SIGHUP
    # before that ends the worker (gunicorn's default), so a test must not signal earlier.
    if not wait_until(lambda: process.output.count(READY) >= workers, timeout=15):
        process.stop()
        raise AssertionError(f"gunicorn's workers are not ready:\n{process.output}")
    if not wait_until(lambda: _accepts(port), timeout=10):
        process.stop()
        raise AssertionError(f"gunicorn does not accept on {port}:\n{process.output}")
    return process


@contextmanager
def serving(kind: str, tmp_path_factory, config: dict):
    """A proxy under ``kind`` on ``config`` (written to a file of its own), with ``kind`` on
    it; stopped at the end, when its output must hold no traceback."""
    path = tmp_path_factory.mktemp(kind) / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process = launch(kind, str(path))
    process.kind = kind
    try:
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.output, process.output


def _accepts(port: int) -> bool:
    try:
        connect(port, timeout=1).close()
        return True
    except OSError:
        return False
