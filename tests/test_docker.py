"""The Docker image, built and run for real whenever a Docker daemon can be reached.

Skipped, with the reason, where there is no ``docker`` command, no daemon, or no base image
to build on. Docker Hub cannot be reached from the project's machines, so the image is
built FROM ``$MYPROXY_DOCKER_BASE`` (default ``myproxy-base:bookworm``, which
``.ci/docker-base`` makes from Debian's packages), or from ``python:3.11-slim`` where that
is present locally. Builds and containers use the host's network: every connection the
tests make stays on 127.0.0.1, and pip in the build reaches the package index as pip here.
"""
import os
import shutil
import subprocess
import uuid

import pytest

from app.check import shutdown_seconds
from app.config import parse
from tests.backends import free_port, wait_until
from tests.conftest import ROOT
from tests.rawclient import connect, get, read_response

IMAGE = "myproxy:test"
DEFAULT_BASES = ("myproxy-base:bookworm", "python:3.11-slim")
TEST_ONLY = ("pytest", "webtest", "pytest_timeout", "websocket")   # import names
BUILD_TIMEOUT = 900      # a first build downloads the dependencies


def docker(*args, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def docker_base() -> str:
    """The base image to build on; skips the module when none can be had."""
    if shutil.which("docker") is None:
        pytest.skip("no docker command here (apt-get install docker.io)")
    try:
        server = docker("version", "--format", "{{.Server.Version}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("the Docker daemon does not answer within 20 s")
    if server.returncode != 0:
        reason = (server.stderr.strip().splitlines() or ["no answer"])[-1]
        pytest.skip(f"no Docker daemon can be reached (start dockerd): {reason}")
    wanted = os.environ.get("MYPROXY_DOCKER_BASE")
    for base in ([wanted] if wanted else DEFAULT_BASES):
        if docker("image", "inspect", base, check=False).returncode == 0:
            return base
    pytest.skip(f"no base image ({' or '.join([wanted] if wanted else DEFAULT_BASES)}); "
                "bash .ci/docker-base makes one from Debian's packages")


@pytest.fixture(scope="module")
def image():
    base = docker_base()
    args = ["build", "--network=host", "--build-arg", f"BASE={base}", "-t", IMAGE, ROOT]
    if os.environ.get("PIP_INDEX_URL"):
        args[1:1] = ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    docker(*args, timeout=BUILD_TIMEOUT)
    return IMAGE


@pytest.fixture
def run(image):
    """``run(*docker_run_args, command=...)``: a detached container on the host's network;
    removed after the test."""
    names = []

    def start(*args, command=()):
        name = f"myproxy-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        docker("run", "-d", "--network", "host", "--name", name, *args, image, *command)
        return name

    yield start
    for name in names:
        docker("rm", "-f", name, check=False)


def readme_docker_run_flags() -> list[str]:
    """The flags of the README's ``docker run`` line, before the image name."""
    with open(os.path.join(ROOT, "README.md")) as readme:
        line = next(line for line in readme if line.startswith("docker build -t myproxy . && docker run"))
    flags = line.split("docker run", 1)[1].split()
    return flags[:flags.index("myproxy")]


def serves(port: int) -> bool:
    try:
        return get(port, "/_myproxy/health")[0] in (200, 503)
    except OSError:
        return False


def test_the_image_serves_the_demo_in_rotation_turns_healthy_and_runs_as_non_root(run):
    ports = [free_port() for _ in range(3)]
    port = free_port()
    backends = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    # The image's own HEALTHCHECK command, run every second instead of every 10 s.
    name = run("-e", f"PORT={port}", "-e", f"MYPROXY_BACKENDS={backends}", "--health-interval=1s",
               command=["python", "wsgi.py", "--demo"])
    assert wait_until(lambda: serves(port), timeout=30), docker("logs", name).stderr
    bodies = [get(port)[2].decode() for _ in range(3)]
    assert bodies == [f"Hello from backend {i} (port {p}) (GET /)\n" for i, p in enumerate(ports, 1)]
    assert wait_until(lambda: docker("inspect", "-f", "{{.State.Health.Status}}", name)
                      .stdout.strip() == "healthy", timeout=30, interval=0.5)
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    modules = ", ".join(repr(module) for module in TEST_ONLY)
    shipped = docker("exec", name, "python", "-c", "import importlib.util; print([m for m in "
                     f"({modules}, 'pip') if importlib.util.find_spec(m)])").stdout.strip()
    assert shipped == "[]", "test tools (or the installer) ship in the runtime image"


def procfile_command() -> list[str]:
    with open(os.path.join(ROOT, "Procfile")) as procfile:
        return next(line for line in procfile if line.startswith("web:"))[len("web:"):].split()


@pytest.mark.parametrize("server", ["image CMD", "Procfile"])
def test_docker_stop_with_the_readmes_flags_drains_an_in_flight_request_and_exits_0(run, backend,
                                                                                   server):
    command = [] if server == "image CMD" else procfile_command()    # [] runs python wsgi.py
    flags = readme_docker_run_flags()
    stop_timeout = int(flags[flags.index("--stop-timeout") + 1])
    assert stop_timeout >= shutdown_seconds(parse("backends: [http://h:1]", environ={}))
    port = free_port()
    name = run("--stop-timeout", str(stop_timeout), "-e", f"PORT={port}",
               "-e", f"MYPROXY_BACKENDS={backend.url}", command=command)
    assert wait_until(lambda: serves(port), timeout=30), docker("logs", name).stderr
    with connect(port) as sock:
        sock.sendall(b"GET /slow?seconds=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert wait_until(lambda: any(r.target.startswith("/slow") for r in backend.requests),
                          timeout=10)
        stop = subprocess.Popen(["docker", "stop", name], stdout=subprocess.DEVNULL)
        status, headers, body = read_response(sock)
    assert (status, body) == (200, b"slow solo")
    assert headers["connection"] == "close"
    assert stop.wait(timeout=stop_timeout + 10) == 0
    assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    logs = docker("logs", name)
    output = logs.stdout + logs.stderr
    assert "received SIGTERM" in output, output
    assert "Traceback" not in output, output
