"""Start-up as an operator meets it first: a port in use, an address that is not this
machine's, a ``host`` that is no address at all (each one line and exit 1, under ``python
wsgi.py`` and the Procfile's ``gunicorn wsgi:application``); gunicorn started outside the
checkout or with a worker that cannot serve MyProxy (one line, no degraded serving); the
systemd unit in deploy/."""
import os
import socket
import sys

import pytest
import yaml

from app.check import shutdown_seconds
from app.config import load
from tests.backends import free_port
from tests.conftest import ROOT, ProxyProcess
from tests.servers import GUNICORN, READY
from tests.rawclient import get


def start(kind: str, path: str, port: int) -> ProxyProcess:
    if kind == "wsgi.py":
        return ProxyProcess([sys.executable, "wsgi.py", "--config", path])
    return ProxyProcess([GUNICORN, "wsgi:application"],
                        env={"MYPROXY_CONFIG": path, "PORT": str(port)})


def myproxy_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("myproxy:")]


@pytest.mark.parametrize("kind", ["wsgi.py", "gunicorn"])
def test_a_port_in_use_is_one_line_and_exit_1(kind, write_config):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    path = write_config({"host": "127.0.0.1", "port": port, "backends": ["http://127.0.0.1:9"]})
    try:
        process = start(kind, path, port)
        assert process.wait(timeout=15) == 1
    finally:
        taken.close()
    assert myproxy_lines(process.output) == [
        f"myproxy: cannot listen on 127.0.0.1:{port}: address already in use"], process.output
    assert "Traceback" not in process.output and "Retrying" not in process.output


@pytest.mark.parametrize("kind", ["wsgi.py", "gunicorn"])
def test_an_address_not_on_this_machine_is_one_line_and_exit_1(kind, write_config):
    port = free_port()    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never a local address
    path = write_config({"host": "192.0.2.1", "port": port, "backends": ["http://127.0.0.1:9"]})
    process = start(kind, path, port)
    assert process.wait(timeout=15) == 1
    assert myproxy_lines(process.output) == [
        f"myproxy: cannot listen on 192.0.2.1:{port}: cannot assign requested address"], \
        process.output
    assert "Traceback" not in process.output


@pytest.mark.parametrize("host", ["0.0.0.0:8080", "http://0.0.0.0", "my host"])
def test_check_refuses_a_host_that_is_no_address_with_file_and_line(tmp_path, host):
    path = tmp_path / "config.yaml"
    path.write_text("backends:\n  - http://127.0.0.1:9\n" + yaml.safe_dump({"host": host}))
    process = ProxyProcess([sys.executable, "wsgi.py", "--check", "--config", str(path)])
    assert process.wait(timeout=15) == 1
    assert myproxy_lines(process.output) == [
        f"myproxy: config error: {path}:3:7: host: {host!r} is not an IP address or a host "
        "name to listen on (such as 0.0.0.0, ::, 127.0.0.1 or localhost; the port goes in "
        "`port`)"], process.output


@pytest.mark.parametrize("host", ["::1", "localhost"])
def test_check_accepts_an_ip_address_or_a_name_this_machine_resolves(write_config, host):
    path = write_config({"host": host, "backends": ["http://127.0.0.1:9"]})
    process = ProxyProcess([sys.executable, "wsgi.py", "--check", "--config", path])
    assert process.wait(timeout=15) == 0, process.output


# --- gunicorn started from anywhere ---------------------------------------------------------

def unit_settings() -> dict[str, list[str]]:
    """deploy/myproxy.service's [Service] settings, each key's values in order."""
    settings: dict[str, list[str]] = {}
    section = None
    with open(os.path.join(ROOT, "deploy", "myproxy.service")) as unit:
        for line in unit:
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and line and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("how", [["--chdir", ROOT], ["--pythonpath", ROOT]],
                         ids=["chdir", "pythonpath"])
def test_gunicorn_started_outside_the_checkout_refuses_in_one_line_that_says_how(
        how, write_config, tmp_path):
    path = write_config({"host": "127.0.0.1", "backends": ["http://127.0.0.1:9"]})
    process = ProxyProcess([GUNICORN, *how, "wsgi:application"], cwd=str(tmp_path),
                           env={"MYPROXY_CONFIG": path, "PORT": str(free_port()),
                                "MYPROXY_GUNICORN_CONF": ""})
    try:
        assert process.wait(timeout=20) == 3          # gunicorn's "Worker failed to boot."
    finally:
        process.stop()
    [line] = myproxy_lines(process.output)
    assert f"gunicorn --config {ROOT}/gunicorn.conf.py wsgi:application" in line
    assert f"WorkingDirectory={ROOT}" in line
    assert "Traceback" not in process.output


def test_gunicorn_with_its_sync_worker_refuses_in_one_line(write_config):
    path = write_config({"host": "127.0.0.1", "backends": ["http://127.0.0.1:9"]})
    process = ProxyProcess([GUNICORN, "-k", "sync", "wsgi:application"],
                           env={"MYPROXY_CONFIG": path, "PORT": str(free_port())})
    try:
        assert process.wait(timeout=20) == 1
    finally:
        process.stop()
    assert myproxy_lines(process.output) == [
        "myproxy: gunicorn's gunicorn.workers.sync.SyncWorker worker cannot serve MyProxy, "
        "which needs a gevent worker (its health checks, tunnels and drain are greenlets): "
        "run it as `gunicorn wsgi:application` "
        "(MyProxy's worker, set in gunicorn.conf.py) or `gunicorn -k gevent wsgi:application`"]
    assert "Booting worker" not in process.output and "Traceback" not in process.output


def test_the_systemd_unit_serves_with_myproxys_worker_from_any_directory(backend, tmp_path):
    settings = unit_settings()
    [command] = settings["ExecStart"]
    [workdir] = settings["WorkingDirectory"]
    args = command.split()
    assert args[1:] == ["--config", f"{workdir}/gunicorn.conf.py", "wsgi:application"]
    assert settings["KillSignal"] == ["SIGTERM"] and settings["KillMode"] == ["mixed"]
    assert float(settings["TimeoutStopSec"][0]) >= shutdown_seconds(load(
        os.path.join(ROOT, "config", "config.yaml"), environ={}))
    env = dict(value.split("=", 1) for value in settings["Environment"])
    port = free_port()
    # Run here: the checkout is ROOT, gunicorn this venv's; started in a directory of its
    # own (no WorkingDirectory), with a config file named relative to it.
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(
        {"host": "127.0.0.1", "port": port, "backends": [backend.url]}))
    args = [GUNICORN] + [arg.replace(workdir, ROOT) for arg in args[1:]]
    process = ProxyProcess(args, cwd=str(tmp_path),
                           env={**env, "MYPROXY_CONFIG": "proxy.yaml", "MYPROXY_GUNICORN_CONF": ""})
    try:
        process.wait_for(READY)
        assert "Using worker: app.server.gunicorn_worker.Worker" in process.output
        assert get(port)[2] == b"backend solo"
        process.signal()
        assert process.wait() == 0
    finally:
        process.stop()
    assert "Traceback" not in process.output


def test_gunicorn_opens_no_control_socket_a_second_master_would_share(backend, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(
        {"host": "127.0.0.1", "backends": [backend.url]}))
    process = ProxyProcess([GUNICORN, "wsgi:application"],
                           env={"MYPROXY_CONFIG": str(tmp_path / "proxy.yaml"), "HOME": str(home),
                                "XDG_RUNTIME_DIR": "", "PORT": str(free_port())})
    try:
        process.wait_for(READY)
        assert not (home / ".gunicorn").exists(), process.output
    finally:
        process.stop()
