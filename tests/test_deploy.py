"""Deployment files: what can be checked without Docker or Kubernetes on this machine.

The Dockerfile's CMD and HEALTHCHECK commands, the docker-compose demo backends and their
health checks, and the gunicorn settings a Procfile PaaS gets are run here for real; the YAML
examples are parsed and checked against the config they carry; the requirements files are
checked against what the code imports. Building and running the image is
``tests/test_docker.py``'s, where a Docker daemon can be reached.
"""
import ast
import importlib.metadata
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from app.check import shutdown_seconds
from app.config import parse, parse_duration
from tests.backends import free_port
from tests.conftest import ROOT, ProxyProcess
from tests.rawclient import get


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments); the first holds
    what comes before the first FROM (the ARGs a FROM may use)."""
    with open(os.path.join(ROOT, "Dockerfile")) as dockerfile:
        text = re.sub(r"\\\n", " ", dockerfile.read())
    stages = [[]]
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
    preamble, build, final_instructions = dockerfile_stages()
    assert ("ARG", "BASE=python:3.11-slim") in preamble
    assert build[0] == ("FROM", "${BASE} AS build") and final_instructions[0] == ("FROM", "${BASE}")
    final = " ".join(args for _, args in final_instructions)
    assert "build-essential" not in final and "apt-get install" not in final
    assert "requirements" not in final          # installed in the build stage
    assert ("COPY", "requirements-runtime.txt .") in build
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
    monkeypatch.delenv("MYPROXY_GUNICORN_CONF", raising=False)    # the file sets both
    settings = runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))
    assert settings["bind"] == ["0.0.0.0:5999"]
    assert settings["workers"] == 1 and settings["worker_class"] == "app.server.gunicorn_worker.Worker"
    assert settings["graceful_timeout"] == 25 < 30
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))["workers"] == 3


def compose() -> dict:
    with open(os.path.join(ROOT, "docker-compose.yml")) as file:
        return yaml.safe_load(file)


def test_compose_builds_the_image_once_and_every_service_runs_it():
    services = compose()["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert len(builders) == 1 and services[builders[0]]["build"] == "."
    image = services[builders[0]]["image"]
    assert {service["image"] for service in services.values()} == {image}


def test_compose_puts_the_proxy_in_front_of_three_demo_backends():
    services = compose()["services"]
    proxy = services["myproxy"]
    assert "8080:8080" in proxy["ports"]
    assert parse_duration(proxy["stop_grace_period"]) >= shutdown_seconds(
        parse("", "compose", environ={"MYPROXY_BACKENDS": "http://h:1"}))
    urls = proxy["environment"]["MYPROXY_BACKENDS"]
    config = parse("", "compose", environ={"MYPROXY_BACKENDS": urls})
    assert len(config.backends) == 3
    assert set(proxy["depends_on"]) == {"backend1", "backend2", "backend3"}
    for backend in config.backends:
        name, port = re.match(r"http://(\w+):(\d+)$", backend.url).groups()
        assert services[name]["command"] == ["python", "wsgi.py", "--demo-backend", port]


def demo_healthcheck(service: dict, port: int) -> list[str]:
    """A demo backend's healthcheck command, aimed at ``port`` instead of its own."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    own = service["command"][-1]
    assert sum(part.count(f"127.0.0.1:{own}/") for part in test) == 1   # its own port, once
    return [part.replace(f"127.0.0.1:{own}/", f"127.0.0.1:{port}/") for part in test[1:]]


@pytest.mark.parametrize("name", ["backend1", "backend2", "backend3"])
def test_compose_demo_backend_serves_passes_its_own_healthcheck_and_stops_on_sigterm(name):
    service = compose()["services"][name]
    assert "8080" not in str(service["healthcheck"])     # not the image's HEALTHCHECK port
    port = free_port()
    process = ProxyProcess(as_local(service["command"][:-1]) + [str(port)])
    try:
        process.wait_for("demo backend listening")
        assert get(port)[2].startswith(f"Hello from backend (port {port})".encode())
        result = subprocess.run(as_local(demo_healthcheck(service, port)), timeout=15)
        assert result.returncode == 0
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.stop()


def test_compose_file_is_valid_for_docker_compose_where_it_is_installed():
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                   capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        pytest.skip("neither docker-compose (v1) nor docker compose (v2) is installed")
    result = subprocess.run([*command, "-f", os.path.join(ROOT, "docker-compose.yml"), "config",
                             "--quiet"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def requirement_lines(name: str) -> list[str]:
    with open(os.path.join(ROOT, name)) as file:
        return [line.split("#")[0].strip() for line in file if line.split("#")[0].strip()]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(name: str) -> dict[str, str]:
    """Each distribution a requirements file pins (extras left out), and its version."""
    return {canonical(re.sub(r"\[.*\]", "", line.split("==")[0])): line.split("==")[1]
            for line in requirement_lines(name) if not line.startswith("-")}


def test_requirements_txt_is_the_runtime_set_plus_the_test_tools_each_pinned_once():
    assert requirement_lines("requirements.txt")[0] == "-r requirements-runtime.txt"
    runtime, everything = pinned("requirements-runtime.txt"), pinned("requirements.txt")
    assert all(line.startswith("-r") or "==" in line for line in requirement_lines("requirements.txt"))
    assert all("==" in line for line in requirement_lines("requirements-runtime.txt"))
    assert not set(runtime) & set(everything), "pinned in both files: they would drift"
    assert {"pytest", "webtest", "pytest-timeout", "websocket-client"} <= set(everything)


def test_every_package_the_running_proxy_imports_is_in_the_runtime_requirements():
    imported = set()
    sources = [os.path.join(ROOT, name) for name in ("wsgi.py", "gunicorn.conf.py")]
    for folder, _, files in os.walk(os.path.join(ROOT, "app")):
        sources += [os.path.join(folder, name) for name in files if name.endswith(".py")]
    for source in sources:
        with open(source) as file:
            for node in ast.walk(ast.parse(file.read())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    third_party = imported - set(sys.stdlib_module_names) - {"app", "wsgi"}   # ours
    needed = {canonical(dist) for module in third_party for dist in distributions[module]}
    assert needed <= set(pinned("requirements-runtime.txt")), needed


def test_gunicorn_waits_for_shutdown_delay_plus_shutdown_timeout(monkeypatch, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("backends: [http://127.0.0.1:5001]\nshutdown_delay: 5s\nshutdown_timeout: 20.5s\n")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # Else the file makes a group directory and leaves it, marked as its own, in this
    # process's environment: the next gunicorn a test starts would remove it at exit, under
    # every later proxy that inherited it.
    monkeypatch.setenv("MYPROXY_GROUP_DIR", str(tmp_path))
    monkeypatch.setenv("MYPROXY_CONFIG", str(path))
    monkeypatch.delenv("MYPROXY_GUNICORN_CONF", raising=False)    # the file sets it
    settings = runpy.run_path(os.path.join(ROOT, "gunicorn.conf.py"))
    assert settings["graceful_timeout"] == 26


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
    assert container["livenessProbe"]["httpGet"] == {"path": "/_myproxy/live", "port": "http"}
    assert "lifecycle" not in container          # shutdown_delay does what a preStop sleep did
    assert config.shutdown_delay >= 5
    assert pod["terminationGracePeriodSeconds"] >= shutdown_seconds(config)
    with open(os.path.join(ROOT, "Procfile")) as procfile:
        assert container["command"] == procfile.read().split(":", 1)[1].split()
    mount = container["volumeMounts"][0]["mountPath"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["MYPROXY_CONFIG"] == mount + "/config.yaml"
    assert str(pod["securityContext"]["runAsUser"]) == final_stage("USER")[-1]
    assert kubernetes["Service"]["spec"]["selector"] == kubernetes["Deployment"]["spec"]["selector"]["matchLabels"]


def test_kubernetes_cluster_example_runs_three_replicas_sharing_one_redis():
    with open(os.path.join(ROOT, "deploy", "kubernetes-cluster.yaml")) as file:
        docs = list(yaml.safe_load_all(file))
    named = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    proxy = named[("Deployment", "myproxy")]
    assert proxy["spec"]["replicas"] == 3
    container = proxy["spec"]["template"]["spec"]["containers"][0]
    secret = named[("Secret", "myproxy-redis")]["stringData"]
    env = {item["name"]: item for item in container["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "myproxy-redis", "key": "url"}
    config = parse(named[("ConfigMap", "myproxy-cluster-config")]["data"]["config.yaml"],
                   "configmap", environ={"REDIS_URL": secret["url"]})
    assert config.cluster.redis == secret["url"] and config.rate_limit.rate == 20
    assert "--requirepass" in named[("Deployment", "myproxy-redis")]["spec"]["template"]["spec"]["containers"][0]["args"]
    host = secret["url"].rsplit("@", 1)[1].split(":")[0]
    assert ("Service", host) in named
    assert proxy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= shutdown_seconds(config)


def test_compose_cluster_example_runs_two_instances_and_one_redis():
    with open(os.path.join(ROOT, "deploy", "docker-compose.cluster.yml")) as file:
        services = yaml.safe_load(file)["services"]
    instances = [services["myproxy1"], services["myproxy2"]]
    assert [s["command"][0] for s in instances] == ["python", "gunicorn"]
    assert services["myproxy2"]["environment"]["WEB_CONCURRENCY"] == "2"
    env = services["myproxy1"]["environment"]
    with open(os.path.join(ROOT, "deploy", "cluster.yaml")) as file:
        config = parse(file.read(), "cluster.yaml", environ=env)
    assert config.cluster.redis == env["REDIS_URL"]
    assert "@redis:" in env["REDIS_URL"] and "redis" in services
    assert "--requirepass" in services["redis"]["command"]
    assert len(config.backends) == 2
    if shutil.which("docker-compose"):
        result = subprocess.run(["docker-compose", "-f", os.path.join(ROOT, "deploy",
                                 "docker-compose.cluster.yml"), "config", "--quiet"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
