"""Liveness and readiness: ``{prefix}/live`` answers while the process serves, ``/health``
while it can serve traffic now; the image's ``HEALTHCHECK`` (``python wsgi.py --alive``)
reads the config (port, TLS, prefix) and asks ``/live``, under ``python wsgi.py`` and the
Procfile's gunicorn."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from app.config import parse
from app.liveness import address
from tests.backends import free_port, wait_until
from tests.certs import make_certificate
from tests.conftest import ProxyProcess
from tests.servers import GUNICORN, READY
from tests.test_deploy import as_local, final_stage
from tests.rawclient import get


def healthcheck_command() -> list[str]:
    """The image's HEALTHCHECK command, to run here."""
    healthcheck = final_stage("HEALTHCHECK")[-1]
    return as_local(json.loads(healthcheck[healthcheck.index("CMD") + 3:]))


def start(kind: str, path: str) -> ProxyProcess:
    """The proxy on the config at ``path``, its port the file's (no ``$PORT``)."""
    if kind == "wsgi.py":
        return ProxyProcess([sys.executable, "wsgi.py"], env={"MYPROXY_CONFIG": path}
                            ).wait_listening()
    process = ProxyProcess([GUNICORN, "wsgi:application"], env={"MYPROXY_CONFIG": path})
    process.wait_for(READY)
    return process


def healthcheck(path: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PORT"}
    return subprocess.run(healthcheck_command(), env={**env, "MYPROXY_CONFIG": path},
                          capture_output=True, text=True, timeout=15)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("certs"), "proxy", ["proxy.test"])


@pytest.mark.parametrize("kind", ["wsgi.py", "gunicorn"])
@pytest.mark.parametrize("setting", ["port", "tls", "prefix", "backends-down"])
def test_the_image_healthcheck_reads_the_config_and_passes_while_the_proxy_serves(
        kind, setting, certificate, tmp_path):
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "backends": ["http://127.0.0.1:9"],
              "health_check": {"interval": "200ms", "timeout": "100ms", "fall": 1}}
    if setting == "tls":
        config["tls"] = {"certificates": [{"cert": certificate[0], "key": certificate[1]}]}
    if setting == "prefix":
        config["admin"] = {"prefix": "/ops"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process = start(kind, str(path))
    try:
        if setting == "backends-down":      # not ready, but alive: no reason to replace it
            assert wait_until(lambda: get(port, "/_myproxy/health")[0] == 503, timeout=10)
        result = healthcheck(str(path))
        assert result.returncode == 0, (result.stdout, result.stderr, process.output)
        assert result.stdout.startswith("myproxy: alive: ")
    finally:
        process.stop()
    result = healthcheck(str(path))
    assert result.returncode == 1
    assert result.stderr.startswith("myproxy: not alive: ") and "Traceback" not in result.stderr


def test_live_answers_200_while_draining_when_health_answers_503(write_config, backend):
    path = write_config({"host": "127.0.0.1", "port": free_port(), "backends": [backend.url],
                         "shutdown_delay": "10s", "admin": {"token": "secret"}})
    process = ProxyProcess([sys.executable, "wsgi.py", "--config", path]).wait_listening()
    try:
        assert get(process.port, "/_myproxy/live")[:3:2] == (200, b"alive\n")   # no token
        process.signal()
        process.wait_for("shutdown_delay: accepting")
        assert get(process.port, "/_myproxy/health")[0] == 503
        assert get(process.port, "/_myproxy/live")[0] == 200
        assert healthcheck(path).returncode == 0
    finally:
        process.stop()


@pytest.mark.parametrize("host,expected", [
    ("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("127.0.0.2", "127.0.0.2"), ("localhost", "localhost"),
])
def test_the_probe_asks_loopback_when_the_proxy_listens_on_every_address(host, expected):
    config = parse(yaml.safe_dump({"host": host, "port": 8443,
                                   "backends": ["http://127.0.0.1:9"]}), "<config>", environ={})
    assert address(config) == (expected, 8443)
