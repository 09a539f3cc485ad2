"""TLS certificates outside their validity (app.server.certificates) under ``python wsgi.py`` and
gunicorn: served as nginx does, and said everywhere an operator looks (the log, the metrics,
/status, ``--check``); and what a reload that renews a certificate says."""
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from tests.backends import TestBackend
from tests.certs import make_certificate, served_names, tls_connect
from tests.conftest import base_config
from tests.servers import SERVERS, launch
from tests.server.test_tls import https_get, tls_section

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    return {
        "good": make_certificate(folder, "good", ["good.test"]),
        "renewed": make_certificate(folder, "renewed", ["good.test"], days=90),
        "expired": make_certificate(folder, "expired", ["old.test"], expired=True),
        "early": make_certificate(folder, "early", ["early.test"], not_yet_valid=True),
    }


@pytest.fixture(scope="module")
def backend():
    started = TestBackend("cert").start()
    yield started
    started.stop()


def _start(kind, config, tmp_path):
    path = tmp_path / f"config-{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = launch(kind, str(path))
    if kind == "gunicorn":       # the master accepts before its worker is up: SIGHUP needs it
        process.wait_for(r"ready: SIGHUP reloads")
    return process, path


def _check(config, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "wsgi.py", "--check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


@pytest.mark.parametrize("kind", SERVERS)
def test_an_expired_and_a_not_yet_valid_certificate_start_and_are_served_with_errors(
        kind, certs, backend, tmp_path):
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section(certs["good"], certs["expired"], certs["early"]))
    process, _ = _start(kind, config, tmp_path)
    try:
        assert re.search(r"ERROR .*certificate\[1\] \S+expired\.pem \(old\.test\) expired 1\.0 days "
                         r"ago \(not after .* UTC\): clients refuse it", process.output), process.output
        assert re.search(r"ERROR .*certificate\[2\] \S+early\.pem \(early\.test\) not valid until "
                         r".* UTC \(in 2\.0 days\)", process.output), process.output
        with tls_connect(process.port, "old.test") as sock:      # served, as nginx does
            assert served_names(sock) == ["old.test"]
            assert https_get(process.port, "/through-expired", "old.test", sock=sock)[0] == 200
        status = yaml.safe_load(https_get(process.port, "/_myproxy/status", "good.test")[2])
        described = {c["names"][0]: c for c in status["tls"]["certificates"]}
        assert (described["good.test"]["valid"], described["good.test"]["problem"]) == (True, None)
        assert described["old.test"]["valid"] is False
        assert described["old.test"]["problem"].startswith("expired 1.0 days ago")
        assert described["early.test"]["problem"].startswith("not valid until")
        metrics = https_get(process.port, "/_myproxy/metrics", "good.test")[2]
        for name, valid in (("good.test", 1), ("old.test", 0), ("early.test", 0)):
            assert f'myproxy_tls_certificate_valid{{name="{name}"}} {valid}.0'.encode() in metrics
        assert re.search(rb'myproxy_tls_certificate_expiry_seconds\{name="old\.test"\} -8\d{4}', metrics)
    finally:
        process.stop()
    assert "Traceback" not in process.output


@pytest.mark.parametrize("kind", SERVERS)
def test_a_reload_with_an_expired_certificate_applies_the_rest_and_renewal_is_logged(
        kind, certs, backend, tmp_path):
    """An expired certificate no longer refuses a reload that changes a backend; putting a
    renewed certificate in the same file is logged with its new expiry."""
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs["expired"][0], cert)
    shutil.copy(certs["expired"][1], key)
    other = TestBackend("other").start()
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section((str(cert), str(key))))
    process, path = _start(kind, config, tmp_path)
    try:
        assert https_get(process.port, "/before", "old.test")[2] == b"backend cert"
        config["backends"] = [other.url]
        path.write_text(yaml.safe_dump(config))
        process.signal(signal.SIGHUP)
        process.wait_for(r"config reloaded: \+backend")
        assert https_get(process.port, "/after", "old.test")[2] == b"backend other"
        assert process.output.count("expired 1.0 days ago") >= 2     # at start, at the reload
        assert "config reload refused" not in process.output

        shutil.copy(certs["renewed"][0], cert)       # certbot renews in place
        shutil.copy(certs["renewed"][1], key)
        process.signal(signal.SIGHUP)
        found = process.wait_for(r"config reloaded: tls\.certificates: renewed certificate\[0\] "
                                 r"(\S+) \(good\.test\) not_after=(\S+ \S+) UTC days_left=(\S+) "
                                 r"\(was not_after=\S+ \S+ UTC\)")
        assert found.group(1) == str(cert)
        assert 89 < float(found.group(3)) <= 90
        with tls_connect(process.port, "good.test") as sock:
            assert served_names(sock) == ["good.test"]
        metrics = https_get(process.port, "/_myproxy/metrics", "good.test")[2]
        assert b'myproxy_tls_certificate_valid{name="good.test"} 1.0' in metrics
    finally:
        process.stop()
        other.stop()
    assert "Traceback" not in process.output


def test_a_reload_without_certificate_changes_names_none(certs, backend, tmp_path):
    config = base_config([backend.url], health_check={"enabled": False},
                         tls=tls_section(certs["good"]))
    process, path = _start("wsgi.py", config, tmp_path)
    try:
        config["log_level"] = "debug"
        path.write_text(yaml.safe_dump(config))
        process.signal(signal.SIGHUP)
        line = process.wait_for(r"config reloaded: .*").group(0)
        assert "log_level" in line and "tls.certificates" not in line
    finally:
        process.stop()


@pytest.mark.parametrize("which", ["expired", "early"])
def test_check_says_a_certificate_is_refused_and_exits_1_without_config_ok(which, certs, tmp_path):
    config = base_config(["http://127.0.0.1:1"], tls=tls_section(certs["good"], certs[which]))
    done = _check(config, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "config OK" not in done.stdout
    assert done.stdout.startswith("config has problems (ERROR lines below): ")
    name = "old.test" if which == "expired" else "early.test"
    assert re.search(rf"tls: ERROR: certificate\[1\] \({re.escape(name)}\) (expired|not valid until)"
                     r".*: clients refuse it \(the proxy starts and serves it", done.stdout), done.stdout
    assert "ERROR: certificate[0]" not in done.stdout


def test_check_with_valid_certificates_says_config_ok(certs, tmp_path):
    done = _check(base_config(["http://127.0.0.1:1"], tls=tls_section(certs["good"])), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("config OK: ")
    assert "ERROR" not in done.stdout
