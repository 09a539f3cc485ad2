"""``python wsgi.py --admin ...``: the admin API from a shell, reading the port, the prefix
and the token from the config, against a running proxy."""
import os
import subprocess
import sys

import pytest

from app.admin_client import UsageError, request_for
from tests.backends import free_port
from tests.conftest import ROOT, base_config
from tests.rawclient import get


def admin(path: str, *words: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PORT", "MYPROXY_ADMIN_TOKEN")}
    return subprocess.run([sys.executable, "wsgi.py", "--admin", *words, "--config", path],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_drain_weight_list_and_reload_from_the_shell(start_proxy, write_config, backends):
    a, b, c = backends
    config = base_config([a.url], port=free_port(), admin={"prefix": "/ops", "token": "s3cret"},
                         routes=[{"name": "api", "path": "/v1", "backends": [b.url, c.url]}])
    proxy = start_proxy(config)
    path = write_config(config)

    done = admin(path, "drain", "api", b.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"api {b.url} drain up weight 1 in_flight 0"
    assert {get(proxy.port, "/v1/x")[2] for _ in range(4)} == {b"backend c"}
    proxy.wait_for(rf"admin change: action=drain route=api backend={b.url} state=ready->drain client=127.0.0.1")

    assert admin(path, "weight", "api", c.url, "3").stdout.strip() == \
        f"api {c.url} ready up weight 3 (set here) in_flight 0"
    listed = admin(path, "list").stdout.splitlines()
    assert listed == [f"api {b.url} drain up weight 1 in_flight 0",
                      f"api {c.url} ready up weight 3 (set here) in_flight 0",
                      f"default {a.url} ready up weight 1 in_flight 0"]
    assert admin(path, "reload").stdout.strip() == "reloaded: no changes"

    refused = admin(path, "ready", "api", "http://127.0.0.1:1")
    assert refused.returncode == 1
    assert "404 route 'api' has no backend 'http://127.0.0.1:1'" in refused.stderr


def test_a_wrong_token_or_no_proxy_exits_1_with_the_answer(start_proxy, write_config, backend):
    config = base_config([backend.url], port=free_port(), admin={"token": "s3cret"})
    start_proxy(config)
    wrong = admin(write_config({**config, "admin": {"token": "wrong"}}), "list")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    nobody = admin(write_config({**config, "port": free_port()}, name="other.yaml"), "list")
    assert nobody.returncode == 1 and "refused" in nobody.stderr


@pytest.mark.parametrize("words, expected", [
    (["drain", "http://h:1"], ("PATCH", "/api/backends", {"backend": "http://h:1", "state": "drain"})),
    (["maint", "api", "http://h:1"],
     ("PATCH", "/api/backends", {"route": "api", "backend": "http://h:1", "state": "maint"})),
    (["weight", "http://h:1", "configured"],
     ("PATCH", "/api/backends", {"backend": "http://h:1", "weight": None})),
    (["reload"], ("POST", "/api/reload", {})),
], ids=["drain-default", "maint-route", "weight-configured", "reload"])
def test_each_command_is_one_api_request(words, expected):
    assert request_for(words) == expected


@pytest.mark.parametrize("words", [["stop", "x"], ["drain"], ["weight", "x", "heavy"], ["list", "x"], []])
def test_a_command_that_makes_no_sense_is_a_usage_error(words):
    with pytest.raises(UsageError):
        request_for(words)
