"""Every duration key, at 0 and at a tiny value: a config that ``--check`` accepts starts,
serves and reloads; one it refuses is refused with ``file:line:column`` and the key.

The keys are read from the schema (``app.config``): a key is a duration when its parser reads
``"1m"`` as 60 seconds, so a duration key added later is covered here without being named.
"""
import signal
import sys

import pytest
import yaml

from app.config import BACKEND_KEYS, POOL_SCALARS, POOL_SECTIONS, ROUTE_ONLY_TIMEOUTS, SCALARS, \
    SECTIONS, TLS_SCALARS
from tests.backends import wait_until
from tests.certs import make_certificate, tls_connect
from tests.conftest import ProxyProcess
from tests.servers import GUNICORN, launch
from tests.rawclient import get, read_response

VALUES = (0, "1ms")


def _is_duration(parse) -> bool:
    try:
        return parse("1m") == 60.0
    except ValueError:
        return False


def duration_keys() -> list[str]:
    """Each duration key as a path: ``slow_start``, ``timeouts.read``, ``backends[].resolve``,
    ``tls.hsts``, ``routes[].timeouts.read``."""
    keys = [key for key, parse in SCALARS.items() if _is_duration(parse)]
    keys += [f"{section}.{key}" for section, (_, parsers) in SECTIONS.items()
             for key, parse in parsers.items() if _is_duration(parse)]
    keys += [f"backends[].{key}" for key, parse in BACKEND_KEYS.items() if _is_duration(parse)]
    keys += [f"tls.{key}" for key, parse in TLS_SCALARS.items() if _is_duration(parse)]
    keys += [f"routes[].{key}" for key in POOL_SCALARS if _is_duration(SCALARS[key])]
    keys += [f"routes[].{section}.{key}" for section in POOL_SECTIONS
             for key, parse in SECTIONS[section][1].items()
             if _is_duration(parse) and (section != "timeouts" or key in ROUTE_ONLY_TIMEOUTS)]
    return keys


def test_the_schema_lists_the_duration_keys_users_write():
    keys = duration_keys()
    for key in ("timeouts.connect", "timeouts.read", "timeouts.tunnel_idle", "slow_start",
                "health_check.timeout", "resolver.timeout", "backends[].resolve", "tls.hsts",
                "routes[].timeouts.read", "routes[].health_check.interval"):
        assert key in keys
    assert "limits.max_body_bytes" not in keys and "retries.budget" not in keys


def config_with(key: str, value, backend_url: str, folder) -> dict:
    """A config for a real proxy with ``key`` set to ``value`` and everything else plain."""
    config = {"host": "127.0.0.1", "port": 0, "backends": [backend_url],
              "health_check": {"interval": "1s"}, "shutdown_timeout": "2s"}
    parts = key.split(".")
    if parts[0] == "routes[]":
        route = {"name": "r", "backends": config.pop("backends")}
        config["routes"] = [route]
        target, parts = route, parts[1:]
    elif parts[0] == "backends[]":
        config["backends"] = [{"url": "http://localhost:1", parts[1]: value}]
        return config
    else:
        target = config
    if parts[0] == "tls":
        cert, private = make_certificate(folder, "proxy", ["localhost"])
        target["tls"] = {"certificates": [{"cert": cert, "key": private}]}
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value
    return config


def _one_request(process: ProxyProcess, tls: bool) -> int:
    """The status of one request through the proxy (any answer: the point is that it answers)."""
    if not tls:
        return get(process.port)[0]
    with tls_connect(process.port, "localhost") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return read_response(sock)[0]


def _reloads(process: ProxyProcess, count: int) -> bool:
    return wait_until(lambda: process.output.count("config reloaded") >= count or
                      "reload refused" in process.output or "reload failed" in process.output,
                      timeout=10) and process.output.count("config reloaded") >= count


@pytest.mark.parametrize("value", VALUES, ids=["zero", "tiny"])
@pytest.mark.parametrize("key", duration_keys())
def test_a_duration_check_accepts_starts_serves_and_reloads(key, value, backend, tmp_path):
    """``--check`` accepts it ⇒ it starts, serves, and a reload to it is applied;
    ``--check`` refuses it ⇒ the message names the file, line, column and key."""
    path = tmp_path / "config.yaml"
    config = config_with(key, value, backend.url, tmp_path)
    path.write_text(yaml.safe_dump(config))
    checked = ProxyProcess([sys.executable, "wsgi.py", "--check", "--config", str(path)])
    if checked.wait(timeout=15) != 0:
        shown = key.replace("[]", "[0]")
        assert f"myproxy: config error: {path}:" in checked.output
        assert f": {shown}: " in checked.output, checked.output
        assert "Traceback" not in checked.output
        return
    process = ProxyProcess([sys.executable, "wsgi.py", "--config", str(path)]).wait_listening()
    try:
        tls = "tls" in config
        assert _one_request(process, tls) in (200, 502, 503, 504)
        # A reload away from the value and back to it: both are applied.
        plain = config_with("slow_start", 0, backend.url, tmp_path)
        plain.update({k: v for k, v in config.items() if k in ("tls", "routes", "backends")})
        path.write_text(yaml.safe_dump(plain))
        process.signal(signal.SIGHUP)
        assert _reloads(process, 1), process.output
        path.write_text(yaml.safe_dump(config))
        process.signal(signal.SIGHUP)
        assert _reloads(process, 2), process.output
        assert _one_request(process, tls) in (200, 502, 503, 504)
    finally:
        process.stop()
    assert "Traceback" not in process.output, process.output


@pytest.mark.parametrize("key", ["timeouts.connect", "timeouts.read"])
def test_a_zero_timeout_is_refused_by_gunicorn_with_the_line_not_a_worker_crash(key, backend,
                                                                               tmp_path):
    """The Procfile's command: the same refusal at start, and on SIGHUP the running config stays."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_with(key, 0, backend.url, tmp_path)))
    started = ProxyProcess([GUNICORN, "wsgi:application"],
                           env={"MYPROXY_CONFIG": str(path), "PORT": "0"})
    try:
        assert started.wait(timeout=20) != 0
    finally:
        started.stop()
    assert f"myproxy: config error: {path}:" in started.output
    assert f": {key}: must be more than 0" in started.output
    assert "Traceback" not in started.output

    path.write_text(yaml.safe_dump(config_with("slow_start", 0, backend.url, tmp_path)))
    process = launch("gunicorn", str(path))
    try:
        path.write_text(yaml.safe_dump(config_with(key, 0, backend.url, tmp_path)))
        process.signal(signal.SIGHUP)
        assert wait_until(lambda: "config reload refused" in process.output, timeout=10), \
            process.output
        assert get(process.port)[0] == 200
    finally:
        process.stop()
    assert f": {key}: must be more than 0" in process.output
    assert "Traceback" not in process.output
