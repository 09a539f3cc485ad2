"""Starting the benchmark's processes and stopping every one of them, by PID.

``Supervisor`` is a context manager: each process it starts is stopped when the block
ends, normally, on an error, on Ctrl-C, or on SIGTERM (which it turns into
``KeyboardInterrupt`` so that the same ``finally`` runs). A process is stopped with
SIGTERM, then SIGKILL after a grace period, and so are the descendants it had (nginx's
workers, gunicorn's worker), each by PID and start time, never by name. Knows nothing
of what the processes are.
"""
from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import subprocess
import time

from . import procfs

STOP_GRACE = 5.0          # seconds between SIGTERM and SIGKILL


class Process:
    """One started command, its output going to a log file."""

    def __init__(self, name: str, args: list[str], log_path: str, cwd: str | None = None,
                 env: dict | None = None):
        self.name = name
        self.args = args
        self.log_path = log_path
        with open(log_path, "ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches the benchmark only,
            # which then stops everything in order.
            self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                text = handle.read()[-8192:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, wait up to ``grace``, then SIGKILL it and whatever it had started."""
        family = procfs.tree(self.pid) if self.running() else []
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=grace)
        for stat in family[1:]:
            _kill_if_same(stat)


def _kill_if_same(stat: procfs.Stat) -> None:
    """SIGKILL the process ``stat`` describes, if that PID still names the same process."""
    current = procfs.read_stat(stat.pid)
    if current is not None and current.starttime == stat.starttime:
        try:
            os.kill(stat.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Supervisor:
    """Starts processes; stops them all, last started first, when the ``with`` block ends."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self._previous_sigterm = None

    def start(self, name: str, args: list[str], cwd: str | None = None,
              env: dict | None = None) -> Process:
        process = Process(name, args, os.path.join(self.log_dir, f"{name}.log"), cwd, env)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        while self.processes:
            process = self.processes.pop()
            try:
                process.stop()
            except Exception as error:  # noqa: BLE001 - keep stopping the others
                print(f"bench: could not stop {process.name} (pid {process.pid}): {error}")

    def __enter__(self) -> "Supervisor":
        self._previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(process: Process, port: int, path: str, timeout: float = 20.0,
                 tls: bool = False) -> None:
    """Wait until ``GET path`` on ``port`` answers 200 (over TLS with ``tls``, any
    certificate accepted); raise with the log if it does not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n"
                               f"{process.log_tail()}")
        try:
            if tls:
                import ssl
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, timeout=2, context=ssl._create_unverified_context())
            else:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                return
            last = f"status {response.status}"
        except OSError as error:
            last = str(error)
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not serve {path} on port {port} within "
                       f"{timeout:.0f}s ({last}):\n{process.log_tail()}")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by what it starts) toward ``wanted``;
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))   # root may raise hard
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted
