"""A real ``redis-server`` (Debian's package) on a loopback port, for the cluster tests.

``RedisServer(folder).start()`` runs one with no persistence in its own directory;
``password`` adds ``--requirepass``; ``tls`` (a certificate and key) makes it speak TLS
only. ``stop()`` ends it by its PID (safe twice); ``start()`` again brings it back on the
same port. Tests that use it skip when the binary is missing (``.ci/run`` installs it).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.backends import free_port, wait_until

BINARY = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed "
                                 "(apt-get install redis-server; .ci/run does)")


class RedisServer:
    def __init__(self, folder, password: str | None = None, tls: tuple[str, str] | None = None):
        self.folder = str(folder)
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [BINARY, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.folder, "--loglevel", "warning"]
        if self.tls:
            cert, key = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self._accepts, timeout=10):
            self.stop()
            raise AssertionError(f"redis-server did not listen on {self.port}")
        return self

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it (SIGKILL: an outage, not a shutdown) and wait for the port to close."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while self._accepts() and time.monotonic() < deadline:
            time.sleep(0.02)

    def client(self):
        import redis
        return redis.Redis.from_url(self.url + ("?ssl_cert_reqs=none" if self.tls else ""),
                                    socket_timeout=2)
