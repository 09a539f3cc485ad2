"""Routes, the pure part: the table's precedence and matching, prefixes, hosts, and what a
reload keeps. No I/O: the tables are built from parsed configs. The same rules over real
sockets, under both servers, are in tests/lb/test_routes_wire.py."""
import pytest

from app.config import parse
from app.lb.routes import build_runtime, request_host

TABLE = """
routes:
  - name: api
    host: api.example.com
    path: /api
    strip_prefix: true
    backends: [http://127.0.0.1:9001]
  - name: api-v2
    host: api.example.com
    path: /api/v2/
    backends: [http://127.0.0.1:9002]
  - name: api-host
    host: api.example.com
    backends: [http://127.0.0.1:9003]
  - name: apps
    host: "*.example.com"
    backends: [http://127.0.0.1:9004]
  - name: eu-apps
    host: "*.eu.example.com"
    backends: [http://127.0.0.1:9005]
  - name: docs
    path: /docs
    backends: [http://127.0.0.1:9006]
  - name: two-names
    host: [shop.test, store.test]
    path: /cart
    backends: [http://127.0.0.1:9007]
backends: [http://127.0.0.1:9000]
"""


def runtime(text=TABLE):
    return build_runtime(parse(text, "r.yaml", environ={}), upstream=None)


def routed(host, path, text=TABLE):
    pool = runtime(text).table.match(request_host(host), path)
    return pool.name if pool is not None else None


@pytest.mark.parametrize("host,path,route", [
    ("api.example.com", "/api", "api"),
    ("api.example.com", "/api/", "api"),
    ("api.example.com", "/api/users", "api"),
    ("api.example.com", "/apix", "api-host"),              # a prefix matches whole segments
    ("api.example.com", "/api/v2", "api-v2"),              # "/api/v2/" matches "/api/v2" too
    ("api.example.com", "/api/v2/x", "api-v2"),            # the longest prefix wins
    ("api.example.com", "/api/v20", "api"),
    ("api.example.com", "/%61pi", "api-host"),             # never decoded
    ("api.example.com", "/API", "api-host"),               # paths are case-sensitive
    ("api.example.com", "/docs", "api-host"),              # an exact host beats any host
    ("API.Example.COM:8080", "/api", "api"),               # lowercased, port removed
    ("www.example.com", "/", "apps"),
    ("a.b.example.com", "/", "apps"),                      # a wildcard spans one or more labels
    ("x.eu.example.com", "/", "eu-apps"),                  # the longer wildcard wins
    ("eu.example.com", "/", "apps"),
    ("example.com", "/", "default"),                       # "*.example.com" needs a label
    ("other.test", "/docs/a", "docs"),
    ("other.test", "/docsx", "default"),
    ("store.test", "/cart", "two-names"),
    ("shop.test", "/cart/1", "two-names"),
    ("shop.test", "/", "default"),
    ("", "/", "default"),                                  # HTTP/1.0 without Host
    ("[::1]:8080", "/", "default"),
])
def test_precedence_and_matching(host, path, route):
    assert routed(host, path) == route


def test_without_a_default_pool_no_match_is_none():
    text = TABLE.replace("backends: [http://127.0.0.1:9000]\n", "")
    assert routed("nowhere.test", "/", text) is None
    assert routed("api.example.com", "/anything", text) == "api-host"


def test_a_host_rule_without_a_matching_path_falls_through_to_less_specific_ones():
    text = ("routes:\n  - {name: a, host: a.test, path: /only, backends: [http://127.0.0.1:1]}\n"
            "  - {name: w, host: '*.test', backends: [http://127.0.0.1:2]}\n")
    assert routed("a.test", "/only/x", text) == "a"
    assert routed("a.test", "/else", text) == "w"


@pytest.mark.parametrize("target,seen", [
    ("/api", "/"),
    ("/api/", "/"),
    ("/api/users/7", "/users/7"),
    ("/api?q=1", "/?q=1"),
    ("/api/x?y=%2F", "/x?y=%2F"),
])
def test_strip_prefix_leaves_at_least_a_slash_and_the_query(target, seen):
    pool = runtime().pool("api")
    assert pool.rewrite(target) == seen
    assert runtime().pool("api-v2").rewrite(target) == target     # no strip_prefix


def test_request_host():
    assert request_host("Example.COM:80") == "example.com"
    assert request_host("[::1]:8080") == "[::1]"
    assert request_host("[::1]") == "[::1]"
    assert request_host("plain") == "plain"
    assert request_host("Example.com.:8080") == "example.com"


def test_the_same_url_in_two_routes_is_two_members():
    text = ("routes:\n  - {name: a, path: /a, backends: [http://127.0.0.1:1]}\n"
            "  - {name: b, path: /b, backends: [http://127.0.0.1:1]}\n")
    built = runtime(text)
    first, second = built.pool("a").backends[0], built.pool("b").backends[0]
    assert first.url == second.url and first is not second


def test_a_reload_keeps_a_kept_routes_backends_and_budget_and_drops_the_rest():
    before = runtime()
    kept = before.pool("api").backends[0]
    budget = before.pool("api").budget
    text = TABLE.replace("  - name: docs\n    path: /docs\n    backends: [http://127.0.0.1:9006]\n", "")
    text = text.replace("name: apps\n    host: \"*.example.com\"\n    backends: [http://127.0.0.1:9004]",
                        "name: apps\n    host: \"*.example.com\"\n    backends: [http://127.0.0.1:9044]")
    after = build_runtime(parse(text, "r.yaml", environ={}), upstream=None, previous=before)
    assert after.pool("api").backends[0] is kept and after.pool("api").budget is budget
    assert after.pool("docs") is None and before.pool("docs") is not None
    assert after.pool("apps").backends[0] is not before.pool("apps").backends[0]
    assert after.pool("default").backends[0] is before.pool("default").backends[0]
    pool = after.table.match("other.test", "/docs")
    assert pool.name == "default"


def test_a_hundred_routes_still_match_by_dicts():
    lines = ["routes:"]
    for index in range(100):
        kind = index % 3
        host = (f"host{index}.test" if kind == 0 else f"'*.zone{index}.test'" if kind == 1
                else None)
        lines.append(f"  - name: r{index}")
        if host:
            lines.append(f"    host: {host}")
        lines.append(f"    path: /p{index}")
        lines.append(f"    backends: [http://127.0.0.1:{10000 + index}]")
    lines.append("backends: [http://127.0.0.1:9000]")
    table = runtime("\n".join(lines) + "\n").table
    assert table.match("host30.test", "/p30/x").name == "r30"
    assert table.match("a.zone31.test", "/p31").name == "r31"
    assert table.match("whatever", "/p32").name == "r32"
    assert table.match("whatever", "/").name == "default"
    assert [pool.name for _, pool in table.ordered()][:2] == ["r0", "r12"]    # exact hosts first


@pytest.mark.parametrize("path,route", [
    ("/a/b", "deep"), ("/a/b/c", "deep"), ("/a/bc", "default"), ("/a", "default"),
    ("/a/b/c/d", "deeper"), ("*", "default"),
])
def test_prefixes_of_several_segments(path, route):
    text = ("routes:\n  - {name: deep, path: /a/b, backends: [http://127.0.0.1:1]}\n"
            "  - {name: deeper, path: /a/b/c/d/, backends: [http://127.0.0.1:2]}\n"
            "backends: [http://127.0.0.1:3]\n")
    assert routed("any.test", path, text) == route


def test_a_routes_own_timeouts_policy_and_retries_apply_to_its_requests_only(backends):
    from webtest import TestApp

    from app import create_app
    a, b, c = backends
    text = (f"routes:\n  - name: quick\n    host: quick.test\n    backends: [{a.url}]\n"
            "    timeouts: {read: 200ms}\n    retries: {attempts: 1}\n"
            f"  - name: sticky\n    path: /s\n    backends: [{b.url}, {c.url}]\n"
            "    policy: hash\n    hash_key: header:X-User\n"
            f"backends: [{a.url}, {b.url}]\nhealth_check: {{enabled: false}}\n")
    client = TestApp(create_app(parse(text, "r.yaml", environ={})), lint=False)
    quick = {"Host": "quick.test"}
    assert client.get("/slow?seconds=0.6", headers=quick, status=504).text.startswith("504 Gateway")
    assert len([r for r in a.requests if r.target == "/slow?seconds=0.6"]) == 1    # no retry
    assert client.get("/slow?seconds=0.4").text in ("slow a", "slow b")   # the default pool: 30 s
    answers = {client.get("/s/1", headers={"X-User": "u7"}).text for _ in range(6)}
    assert len(answers) == 1 and answers <= {"backend b", "backend c"}
