"""Start-up failures an operator meets first: a port in use, an address that is not this
machine's, a ``host`` that is no address at all. Each is one line and exit 1, under
``python wsgi.py`` and under the Procfile's ``gunicorn wsgi:application``."""
import socket
import sys

import pytest
import yaml

from tests.backends import free_port
from tests.conftest import ProxyProcess
from tests.servers import GUNICORN


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
