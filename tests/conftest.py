"""Shared fixtures: real backends on port 0, config files, and a running proxy process.

gevent is patched first, as in ``wsgi.py`` (STACK-FACTS 12, 25), so that the in-process
backends serve while a test blocks on a client socket.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from tests.backends import TestBackend  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(r"myproxy.server listening on https?://([\d.]+):(\d+)")


@pytest.fixture
def backends():
    started = [TestBackend(name).start() for name in ("a", "b", "c")]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def backend():
    started = TestBackend("solo").start()
    yield started
    started.stop()


@pytest.fixture
def write_config(tmp_path):
    """Write a config mapping (or YAML text) to a file and return its path."""
    def write(config, name="config.yaml") -> str:
        path = tmp_path / name
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        return str(path)
    return write


def base_config(urls, **overrides) -> dict:
    """A config for tests: loopback, port 0, quick health checks."""
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "backends": list(urls),
        "health_check": {"interval": "200ms", "timeout": "150ms", "rise": 2, "fall": 2},
        "shutdown_timeout": "5s",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class ProxyProcess:
    """``python wsgi.py`` (or another command) in a subprocess, with its output collected."""

    def __init__(self, args, env=None, cwd=ROOT):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("PORT", None) if env is None or "PORT" not in env else None
        self.proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._reader = gevent.spawn(self._read)
        self.port = None

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for(self, pattern: str, timeout: float = 15.0):
        """Wait until a line matching ``pattern`` is printed; return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.output)
            if match:
                return match
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                match = regex.search(self.output)
                if match:
                    return match
                raise AssertionError(f"process exited {self.proc.returncode}:\n{self.output}")
            gevent.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output}")

    def wait_listening(self, timeout: float = 15.0) -> "ProxyProcess":
        match = self.wait_for(LISTENING.pattern, timeout)
        self.port = int(match.group(2))
        return self

    def signal(self, signum=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=2)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=2)


@pytest.fixture
def start_proxy(write_config):
    """Start ``python wsgi.py --config FILE`` with a config mapping; stopped after the test."""
    started = []

    def start(config, extra_args=(), env=None, wait=True) -> ProxyProcess:
        path = write_config(config)
        process = ProxyProcess([sys.executable, "wsgi.py", "--config", path, *extra_args], env=env)
        started.append(process)
        return process.wait_listening() if wait else process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def serve():
    """Serve a proxy app built from ``base_config(urls, **overrides)`` in this process, on a
    real pywsgi server on port 0 (its health checks not started); ``app.port`` is its port."""
    from app import create_app
    from app.config import parse
    from app.server.standalone import Server
    started = []

    def start(urls, **overrides):
        config = parse(yaml.safe_dump(base_config(urls, **overrides)), environ={})
        app = create_app(config)
        server = Server(("127.0.0.1", 0), app)
        server.start()
        started.append((server, app))
        app.port = server.server_port
        return app

    yield start
    for server, app in started:
        server.stop(timeout=1)
        app.stop()


@pytest.fixture(scope="module")
def raw():
    """A backend that records each request's bytes as received (``tests.rawbackend``), for a
    module's tests of what goes over the wire."""
    from tests.rawbackend import RawBackend
    backend = RawBackend().start()
    yield backend
    backend.stop()
