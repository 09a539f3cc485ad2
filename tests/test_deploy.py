"""Deployment files: what can be checked without Docker or Kubernetes on this machine.

The Dockerfile's CMD and HEALTHCHECK commands, the docker-compose demo backends and the
gunicorn settings a Procfile PaaS gets are run here for real; the YAML examples are parsed
and checked against the config they carry. Building the image is not.
"""
import json
import os
import re
import runpy
import signal
import subprocess
import sys

import pytest
import yaml

from app.config import parse
from tests.backends import free_port
from tests.conftest import ROOT, ProxyProcess
from tests.wire import get


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments)."""
    with open(os.path.join(ROOT, "Dockerfile")) as dockerfile:
        text = re.sub(r"\\\n", " ", dockerfile.read())
    stages = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def final_stage(instruction: str) -> list[str]:
    return [args for name, args in dockerfile_stages()[-1] if name == instruction]


def as_local(command: list[str]) -> list[str]:
    """An image command run here: ``python`` is this interpreter."""
    return [sys.executable if part == "python" else part for part in command]


def test_image_is_slim_unprivileged_unbuffered_and_drains_on_stop():
    stages = dockerfile_stages()
    assert stages[-1][0] == ("FROM", "python:3.11-slim")
    final = " ".join(args for _, args in stages[-1])
    assert "build-essential" not in final and "apt-get install" not in final
    assert "PYTHONUNBUFFERED=1" in " ".join(final_stage("ENV"))
    user = final_stage("USER")[-1]
    assert user not in ("root", "0")
    assert final_stage("STOPSIGNAL") == ["SIGTERM"]


def test_image_command_serves_with_the_shipped_config_and_its_healthcheck_passes(backend):
    command = json.loads(final_stage("CMD")[-1])
    assert command == ["python", "wsgi.py"]
    port = free_port()
    env = {"PORT": str(port), "MYPROXY_BACKENDS": backend.url}
    process = ProxyProcess(as_local(command), env=env).wait_listening()
    try:
        assert process.port == port
        assert get(port)[2] == b"backend solo"
        healthcheck = final_stage("HEALTHCHECK")[-1]
        check = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
        result = subprocess.run(as_local(check), env={**os.environ, **env}, timeout=15)
        assert result.returncode == 0
    finally:
        process.stop()
    assert process.proc.returncode == 0


def test_procfile_runs_gunicorn_with_settings_that_finish_inside_a_paas_30_seconds(monkeypatch,
                                                                                  tmp_path):
    with open(os.path.join(ROOT, "Procfile")) as procfile:
        assert procfile.read().strip() == "web: gunicorn wsgi:application"
    monkeypatch.chdir(ROOT)
    # gunicorn.conf.py would otherwise make a metrics directory and put it in this
    # process's environment, switching later apps in the test run to multiprocess metrics.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("MYPROXY_GROUP_DIR", str(tmp_path))       # the same, for the group view
    monkeypatch.setenv("PORT", "5999")
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("MYPROXY_CONFIG", raising=False)
    settings = runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))
    assert settings["bind"] == ["0.0.0.0:5999"]
    assert settings["workers"] == 1 and settings["worker_class"] == "app.server.gunicorn_worker.Worker"
    assert settings["graceful_timeout"] == 25 < 30
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))["workers"] == 3


def compose() -> dict:
    with open(os.path.join(ROOT, "docker-compose.yml")) as file:
        return yaml.safe_load(file)


def test_compose_puts_the_proxy_in_front_of_three_demo_backends():
    services = compose()["services"]
    proxy = services.pop("myproxy")
    assert proxy["build"] == "." and "8080:8080" in proxy["ports"]
    urls = proxy["environment"]["MYPROXY_BACKENDS"]
    config = parse("", "compose", environ={"MYPROXY_BACKENDS": urls})
    assert len(config.backends) == 3 == len(services)
    for backend in config.backends:
        name, port = re.match(r"http://(\w+):(\d+)$", backend.url).groups()
        assert services[name]["command"] == ["python", "wsgi.py", "--demo-backend", port]
        assert services[name]["build"] == "."


def test_compose_demo_backend_command_serves_and_stops_on_sigterm():
    port = free_port()
    command = compose()["services"]["backend1"]["command"]
    process = ProxyProcess(as_local(command[:-1]) + [str(port)])
    try:
        process.wait_for("demo backend listening")
        assert get(port)[2].startswith(f"Hello from backend (port {port})".encode())
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.stop()


@pytest.fixture
def kubernetes() -> dict:
    with open(os.path.join(ROOT, "deploy", "kubernetes.yaml")) as file:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(file)}


def test_kubernetes_example_probes_drains_and_mounts_a_valid_config(kubernetes):
    config = parse(kubernetes["ConfigMap"]["data"]["config.yaml"], "configmap", environ={})
    pod = kubernetes["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["ports"][0]["containerPort"] == config.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/_myproxy/health", "port": "http"}
    assert "tcpSocket" in container["livenessProbe"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + config.shutdown_timeout
    with open(os.path.join(ROOT, "Procfile")) as procfile:
        assert container["command"] == procfile.read().split(":", 1)[1].split()
    mount = container["volumeMounts"][0]["mountPath"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["MYPROXY_CONFIG"] == mount + "/config.yaml"
    assert str(pod["securityContext"]["runAsUser"]) == final_stage("USER")[-1]
    assert kubernetes["Service"]["spec"]["selector"] == kubernetes["Deployment"]["spec"]["selector"]["matchLabels"]
