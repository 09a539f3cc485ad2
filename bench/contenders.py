"""The servers under test: backends, MyProxy (standalone and under gunicorn), nginx, HAProxy, Caddy.

Each ``start_*`` function writes its config into the work directory, starts the server
through the ``Supervisor`` (which stops it later), waits until it serves, and returns a
``Contender``: the URL to load and the process whose CPU and memory are measured.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import yaml

from . import configs
from .processes import Process, Supervisor, free_port, wait_serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 20.0
_VERSION = re.compile(r"\d+\.\d+[\w.+~-]*")


@dataclass
class Contender:
    name: str            # short id used in results: direct, nginx, haproxy, myproxy, ...
    description: str
    url: str             # base URL, without a path
    process: Process     # measured: this process and its descendants


def find_tool(name: str, *candidates: str) -> str | None:
    """The path of a program, from ``candidates`` or ``PATH``; None when not installed."""
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def tool_version(path: str, flag: str = "-v") -> str:
    """The version a program prints of itself, such as ``1.22.1`` for nginx."""
    result = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
    match = _VERSION.search(result.stdout + result.stderr)
    return match.group(0) if match else "?"


def write_files(root: str) -> None:
    """The static files of ``configs.FILES``, readable by nginx's unprivileged workers."""
    os.makedirs(root, exist_ok=True)
    for path, size in configs.FILES.items():
        with open(os.path.join(root, path.lstrip("/")), "wb") as handle:
            handle.write((b"0123456789abcdef" * (size // 16 + 1))[:size])


def start_backends(sup: Supervisor, workdir: str, nginx: str | None,
                   count: int = 3) -> tuple[list[str], Contender]:
    """``count`` backends on loopback: nginx (one worker, every port) when installed,
    else the built-in gevent backend. Returns their URLs and the backend as a contender
    (``direct``: wrk straight at the first backend, the ceiling)."""
    root = os.path.join(workdir, "www")
    write_files(root)
    ports = [free_port() for _ in range(count)]
    if nginx:
        os.makedirs(os.path.join(workdir, "backend-nginx-tmp"), exist_ok=True)
        conf = _write(workdir, "backend-nginx.conf", configs.nginx_backends(workdir, root, ports))
        process = sup.start("backend-nginx", [nginx, "-e", os.path.join(workdir, "backend-nginx-error.log"),
                                               "-p", workdir, "-c", conf])
        what = "wrk straight at one nginx backend (the ceiling)"
    else:
        process = start_builtin_backend(sup, root, ports)
        what = "wrk straight at one built-in backend (the ceiling)"
    for port in ports:
        wait_serving(process, port, configs.HEALTH_PATH, START_TIMEOUT)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    return urls, Contender("direct", what, urls[0], process)


def start_builtin_backend(sup: Supervisor, root: str, ports: list[int],
                          name: str = "backend-builtin") -> Process:
    return sup.start(name, [sys.executable, "-m", "bench.backend", "--root", root,
                            *map(str, ports)], cwd=ROOT)


def start_nginx(sup: Supervisor, workdir: str, nginx: str, backends: list[str],
                tls: tuple[str, str] | None = None) -> Contender:
    """nginx as the balancer; with ``tls`` (cert, key), over HTTPS: ``nginx-https``."""
    port = free_port()
    name = "nginx-https" if tls else "nginx-lb"
    os.makedirs(os.path.join(workdir, f"{name}-tmp"), exist_ok=True)
    conf = _write(workdir, f"{name}.conf",
                  configs.nginx_balancer(workdir, port, backends, tls=tls, name=name))
    process = sup.start(name, [nginx, "-e", os.path.join(workdir, f"{name}-error.log"),
                               "-p", workdir, "-c", conf])
    scheme = "https" if tls else "http"
    wait_serving(process, port, configs.HEALTH_PATH, START_TIMEOUT, tls=bool(tls))
    return Contender("nginx-https" if tls else "nginx",
                     "nginx, 1 worker, round-robin, upstream keep-alive"
                     + (", TLS (intermediate profile)" if tls else ""),
                     f"{scheme}://127.0.0.1:{port}", process)


def make_certificate(workdir: str, name: str = "bench.test") -> tuple[str, str]:
    """A self-signed EC P-256 certificate for ``name`` (what Let's Encrypt issues by
    default for ECDSA), for MyProxy and nginx alike: (cert path, key path)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(workdir, "bench.pem"), os.path.join(workdir, "bench.key")
    with open(cert_path, "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(key_path, 0o644)        # nginx's master reads it as root; workers never do
    return cert_path, key_path


def start_haproxy(sup: Supervisor, workdir: str, haproxy: str, backends: list[str]) -> Contender:
    port = free_port()
    conf = _write(workdir, "haproxy.cfg", configs.haproxy_balancer(port, backends))
    process = sup.start("haproxy", [haproxy, "-db", "-f", conf])
    wait_serving(process, port, configs.HEALTH_PATH, START_TIMEOUT)
    return Contender("haproxy", "HAProxy, 1 thread, roundrobin, http-reuse safe",
                     f"http://127.0.0.1:{port}", process)


def start_caddy(sup: Supervisor, workdir: str, caddy: str, backends: list[str]) -> Contender:
    """``caddy run`` on a Caddyfile, ``GOMAXPROCS=1`` (one core's worth, as the others);
    its data and config directories inside the work directory."""
    port = free_port()
    conf = _write(workdir, "Caddyfile", configs.caddy_balancer(port, backends))
    env = _env(GOMAXPROCS="1", XDG_DATA_HOME=os.path.join(workdir, "caddy-data"),
               XDG_CONFIG_HOME=os.path.join(workdir, "caddy-config"))
    process = sup.start("caddy", [caddy, "run", "--config", conf, "--adapter", "caddyfile"],
                        env=env)
    wait_serving(process, port, configs.HEALTH_PATH, START_TIMEOUT)
    return Contender("caddy", "Caddy, GOMAXPROCS=1, reverse_proxy round_robin, keep-alive, "
                     "no access log", f"http://127.0.0.1:{port}", process)


def start_myproxy(sup: Supervisor, workdir: str, backends: list[str], name: str = "myproxy",
                  description: str = "MyProxy, python wsgi.py (pywsgi), 1 process",
                  root: str = ROOT, **overrides) -> Contender:
    """``python wsgi.py --config FILE``: one process (over HTTPS with a ``tls`` override),
    from this tree or another (``root``: a baseline's)."""
    port = free_port()
    path = _write(workdir, f"{name}.yaml",
                  yaml.safe_dump(configs.myproxy(port, backends, **overrides)))
    process = sup.start(name, [sys.executable, "wsgi.py", "--config", path], cwd=root,
                        env=_env())
    tls = "tls" in overrides
    wait_serving(process, port, configs.HEALTH_PATH, START_TIMEOUT, tls=tls)
    return Contender(name, description + (", TLS (intermediate profile)" if tls else ""),
                     f"{'https' if tls else 'http'}://127.0.0.1:{port}", process)


def start_baseline(sup: Supervisor, workdir: str, backends: list[str], ref: str) -> Contender:
    """``python wsgi.py`` as ``myproxy``, from the tree at git ``ref`` (exported into
    ``workdir``), named ``myproxy@REF``: a change measured against what it changes, in
    the same run."""
    root = export_tree(ref, os.path.join(workdir, "tree-" + re.sub(r"[^A-Za-z0-9_.-]", "_", ref)))
    return start_myproxy(sup, workdir, backends, name=f"myproxy@{ref}",
                         description=f"MyProxy at {ref}, python wsgi.py, 1 process", root=root)


def export_tree(ref: str, root: str) -> str:
    """The files of git ``ref`` of this repository, written into ``root`` (made here)."""
    os.makedirs(root)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True,
                             capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True, timeout=60)
    return root


def start_myproxy_routes(sup: Supervisor, workdir: str, backends: list[str]) -> Contender:
    """``python wsgi.py`` with a table of ``configs.ROUTES`` routes in front of the same pool."""
    return start_myproxy(sup, workdir, backends, name="myproxy-routes",
                         description=f"MyProxy, python wsgi.py, {configs.ROUTES} routes "
                                     "(requests fall through to the default pool)",
                         routes=configs.route_table(backends))


def start_myproxy_capped(sup: Supervisor, workdir: str, backends: list[str]) -> Contender:
    """``python wsgi.py`` with ``max_conns`` on every backend, set far above what the load
    reaches, so the queue stays empty: the hot-path cost of the cap itself (issue 25)."""
    return start_myproxy(sup, workdir, [{"url": url, "max_conns": CAPPED_MAX_CONNS}
                                        for url in backends], name="myproxy-capped",
                         description=f"MyProxy, python wsgi.py, max_conns {CAPPED_MAX_CONNS} "
                                     "per backend (never reached: the queue stays empty)")


CAPPED_MAX_CONNS = 10000

# Each way of running under gunicorn: contender name -> (extra arguments, description).
GUNICORN_WAYS = {
    "myproxy-gunicorn": ([], "MyProxy, gunicorn wsgi:application (MyProxy's worker), 1 worker"),
    "myproxy-gunicorn-gevent": (["-k", "gevent"], "MyProxy, gunicorn -k gevent (stock worker), 1 worker"),
}


def start_gunicorn(sup: Supervisor, workdir: str, backends: list[str],
                   name: str = "myproxy-gunicorn") -> Contender:
    """gunicorn with one worker (measured with its master), one of ``GUNICORN_WAYS``."""
    args, description = GUNICORN_WAYS[name]
    port = free_port()
    path = _write(workdir, f"{name}.yaml", yaml.safe_dump(configs.myproxy(port, backends)))
    env = _env(MYPROXY_CONFIG=path, PORT=str(port), WEB_CONCURRENCY="1")
    process = sup.start(name, [sys.executable, "-m", "gunicorn", *args, "wsgi:application"],
                        cwd=ROOT, env=env)
    wait_serving(process, port, configs.HEALTH_PATH, START_TIMEOUT)
    return Contender(name, description, f"http://127.0.0.1:{port}", process)


def _env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PORT", "MYPROXY_CONFIG", "MYPROXY_BACKENDS", "WEB_CONCURRENCY")}
    env.update(extra)
    return env


def _write(workdir: str, name: str, text: str) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as handle:
        handle.write(text)
    return path
