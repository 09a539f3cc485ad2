"""Config loading: defaults, units, environment, and errors that name file, key and line."""
import pytest

from app.config import ConfigError, QueueConfig, load, parse, parse_duration, parse_size

MINIMAL = "backends:\n  - http://127.0.0.1:5001\n"


def test_defaults_hold_when_keys_are_absent():
    config = parse(MINIMAL, "c.yaml", environ={})
    assert config.port == 8080
    assert config.host == "0.0.0.0"
    assert config.policy == "round_robin"
    assert config.health_check.interval == 5.0
    assert config.health_check.rise == 2 and config.health_check.fall == 3
    assert config.health_check.expect == ((200, 399),)
    assert config.shutdown_timeout == 25.0
    assert config.limits.max_header_bytes == 65536
    assert config.admin.prefix == "/_myproxy"
    assert config.origins["port"] == "default"


def test_shipped_config_is_the_users_example():
    config = load("config/config.yaml", environ={})
    assert config.port == 8080
    assert [b.url for b in config.backends] == [
        "http://localhost:5001", "http://localhost:5002", "http://localhost:5003"]


@pytest.mark.parametrize("text,seconds", [
    (2, 2.0), (0.5, 0.5), ("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1.5s", 1.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,size", [
    (1024, 1024), ("64KiB", 65536), ("10MiB", 10 * 1024 ** 2), ("1KB", 1000), ("0", 0),
])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_weighted_backends_as_mappings():
    config = parse("backends:\n  - http://h:1\n  - url: http://h:2\n    weight: 3\n    backup: true\n",
                   environ={})
    assert [(b.url, b.weight, b.backup) for b in config.backends] == [
        ("http://h:1", 1, False), ("http://h:2", 3, True)]


def _error(text, environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(text, "conf.yaml", environ=environ or {})
    return caught.value


@pytest.mark.parametrize("text,key,line,words", [
    (MINIMAL + "prot: 8080\n", "prot", 3, "unknown key (did you mean `port`?)"),
    (MINIMAL + "health_check:\n  intervall: 5s\n", "health_check.intervall", 4,
     "did you mean `interval`"),
    (MINIMAL + "health_check:\n  interval: soon\n", "health_check.interval", 4, "not a duration"),
    (MINIMAL + "port: eighty\n", "port", 3, "expected a whole number"),
    (MINIMAL + "port: 70000\n", "port", 3, "TCP port"),
    ("backends: []\n", "backends", 1, "non-empty list"),
    ("port: 1\n", "backends", 1, "is required"),
    ("backends:\n  - ftp://h:1\n", "backends[0]", 2, "not an http:// or https:// URL"),
    ("backends:\n  - http://h:1\n  - url: http://h:2\n    wieght: 2\n", "backends[1].wieght", 4,
     "did you mean `weight`"),
    ("backends:\n  - http://h:1\n  - http://h:1\n", "backends[1]", 3, "listed twice"),
    (MINIMAL + "policy: fastest\n", "policy", 3, "expected one of"),
    (MINIMAL + "health_check: yes\n", "health_check", 3, "expected a mapping"),
], ids=["unknown-key", "unknown-nested-key", "bad-duration", "wrong-type", "port-range",
        "empty-backends", "missing-backends", "bad-scheme", "unknown-backend-key",
        "duplicate-backend", "bad-policy", "section-not-mapping"])
def test_errors_name_file_key_and_line(text, key, line, words):
    error = _error(text)
    assert error.file == "conf.yaml"
    assert error.key == key
    assert error.line == line
    assert words in str(error)
    assert str(error).startswith("conf.yaml:")


def test_bad_yaml_names_the_line():
    error = _error("backends:\n  - http://h:1\nport: [8080\n")
    assert error.line is not None and error.line >= 3
    assert "invalid YAML" in str(error)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load(str(tmp_path / "nope.yaml"), environ={})


def test_environment_overrides():
    config = parse(MINIMAL, environ={"PORT": "9000", "MYPROXY_BACKENDS": "http://x:1, http://y:2",
                                     "MYPROXY_ADMIN_TOKEN": "s3cret"})
    assert config.port == 9000
    assert [b.url for b in config.backends] == ["http://x:1", "http://y:2"]
    assert config.admin.token == "s3cret"
    assert config.origins["port"] == "env PORT"
    assert config.origins["backends"] == "env MYPROXY_BACKENDS"


def test_myproxy_config_names_the_file(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("backends: [http://other:1]\n")
    assert load(environ={"MYPROXY_CONFIG": str(path)}).backends[0].url == "http://other:1"


def test_variables_are_substituted_and_typed():
    config = parse("port: ${MY_PORT:-8181}\nbackends:\n  - http://${HOST}:1\n",
                   environ={"HOST": "10.1.2.3"})
    assert config.port == 8181
    assert config.backends[0].url == "http://10.1.2.3:1"


def test_unset_variable_without_default_is_an_error():
    error = _error("backends:\n  - http://${NOPE}:1\n")
    assert "NOPE" in str(error) and error.line == 2


def test_an_empty_environment_override_counts_as_unset():
    config = parse(MINIMAL, environ={"MYPROXY_BACKENDS": "", "PORT": "", "MYPROXY_ADMIN_TOKEN": ""})
    assert [b.url for b in config.backends] == ["http://127.0.0.1:5001"]
    assert config.origins["backends"] == "file" and config.origins["port"] == "default"


def test_variables_work_in_nested_and_backend_values_and_are_typed():
    config = parse("backends:\n  - url: http://${H:-h}:1\n    weight: ${W}\n"
                   "health_check:\n  interval: ${I:-2s}\n  enabled: ${ON:-true}\n",
                   environ={"W": "3"})
    assert (config.backends[0].url, config.backends[0].weight) == ("http://h:1", 3)
    assert config.health_check.interval == 2.0 and config.health_check.enabled is True
    assert config.origins["backends[0]"] == "file, default of ${H}, env W"
    assert config.origins["health_check.interval"] == "file, default of ${I}"


def test_an_unset_variable_in_a_nested_value_is_named_with_its_key():
    error = _error(MINIMAL + "health_check:\n  path: ${CHECK_PATH}\n")
    assert (error.key, error.line, error.column) == ("health_check.path", 4, 9)
    assert "environment variable CHECK_PATH is not set" in str(error)


def test_tunnel_idle_defaults_to_an_hour_and_takes_a_duration():
    assert parse(MINIMAL, environ={}).timeouts.tunnel_idle == 3600.0
    config = parse(MINIMAL + "timeouts:\n  tunnel_idle: 90s\n", environ={})
    assert config.timeouts.tunnel_idle == 90.0
    assert config.origins["timeouts.tunnel_idle"] == "file"
    error = _error(MINIMAL + "timeouts:\n  tunnel_idle: forever\n")
    assert (error.key, error.line) == ("timeouts.tunnel_idle", 4)
    assert "not a duration" in str(error)


@pytest.mark.parametrize("section,key,instead", [
    ("timeouts", "connect", "write a long duration such as 1h"),
    ("timeouts", "read", "write a long duration such as 1h"),
    ("timeouts", "client_header", "write a long duration such as 1h"),
    ("timeouts", "client_idle", "write a long duration such as 1h"),
    ("health_check", "timeout", "health_check.enabled: false"),
    ("passive_health", "eject_for", "passive_health.failures: 0"),
])
def test_a_zero_with_no_meaning_of_its_own_is_refused_saying_what_to_write(section, key, instead):
    error = _error(MINIMAL + f"{section}:\n  {key}: 0s\n")
    assert (error.key, error.line, error.column) == (f"{section}.{key}", 4, 3 + len(key) + 2)
    assert "must be more than 0" in str(error) and instead in str(error)
    routed = _error(f"routes:\n  - name: r\n    backends: [http://h:1]\n    {section}:\n"
                    f"      {key}: 0\n") if section != "timeouts" or key in ("connect", "read") \
        else None
    assert routed is None or routed.key == f"routes[0].{section}.{key}"


@pytest.mark.parametrize("key", ["slow_start", "shutdown_delay", "shutdown_timeout",
                                 "timeouts.tunnel_idle", "tls.hsts"])
def test_a_zero_that_means_off_is_taken(key):
    section, _, name = key.rpartition(".")
    tls = "tls:\n  certificates: [{cert: c.pem, key: k.pem}]\n" if section == "tls" else ""
    text = MINIMAL + tls + (f"  {name}: 0\n" if section == "tls" else
                            f"{section}:\n  {name}: 0\n" if section else f"{name}: 0\n")
    config = parse(text, environ={})
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    assert value == 0


ROUTES = """\
policy: least_connections
health_check:
  path: /ready
routes:
  - name: api
    host: API.example.com
    path: /v1/
    backends: [http://127.0.0.1:9001]
    health_check:
      interval: 1s
      timeout: 500ms
    timeouts:
      read: 5s
  - name: web
    host: ["www.example.com", "*.example.org"]
    backends:
      - url: http://127.0.0.1:9002
        weight: 2
"""


def test_routes_are_pools_whose_settings_fall_back_to_the_top_level():
    config = parse(ROUTES, "conf.yaml", environ={})
    assert config.backends == () and config.default_route is None
    api, web = config.routes
    assert (api.name, api.hosts, api.path, api.strip_prefix) == ("api", ("api.example.com",), "/v1", False)
    assert api.policy == "least_connections" and api.health_check.path == "/ready"
    assert (api.health_check.interval, api.timeouts.read, api.timeouts.connect) == (1.0, 5.0, 3.0)
    assert api.origins["policy"] == "top level, file" and api.origins["timeouts.read"] == "routes[0], file"
    assert api.origins["retries.attempts"] == "default" and api.line == 5
    assert web.hosts == ("www.example.com", "*.example.org") and web.backends[0].weight == 2
    assert [pool.name for pool in config.pools] == ["api", "web"]


def test_top_level_backends_are_the_default_pool_and_myproxy_backends_replaces_only_it():
    text = ROUTES + "backends: [http://127.0.0.1:9000]\n"
    config = parse(text, "conf.yaml", environ={"MYPROXY_BACKENDS": "http://10.0.0.1:80"})
    assert [pool.name for pool in config.pools] == ["api", "web", "default"]
    assert config.default_route.backends[0].url == "http://10.0.0.1:80"
    assert config.routes[0].backends[0].url == "http://127.0.0.1:9001"
    assert config.default_route.policy == "least_connections"


@pytest.mark.parametrize("text,key,line,words", [
    (ROUTES + "  - name: api\n    backends: [http://h:1]\n", "routes[2].name", 19, "already the name of routes[0]"),
    (ROUTES + "  - name: again\n    host: api.example.com\n    path: /v1\n    backends: [http://h:1]\n",
     "routes[2]", 19, "as routes[0] (line 5)"),
    (ROUTES + "  - name: x\n    host: WWW.example.com\n    backends: [http://h:1]\n",
     "routes[2]", 19, "the same host rule (www.example.com) and path (any path) as routes[1] (line 14)"),
    ("routes:\n  - name: a\n    pathh: /x\n    backends: [http://h:1]\n", "routes[0].pathh", 3,
     "did you mean `path`"),
    ("routes:\n  - name: a\n    backends: [http://h:1]\n    timeouts: {client_idle: 5s}\n",
     "routes[0].timeouts.client_idle", 4, "set at the top level only"),
    ("routes:\n  - name: a\n    host: a.test:8080\n    backends: [http://h:1]\n", "routes[0].host", 3,
     "without its port"),
    ("routes:\n  - name: Api\n    backends: [http://h:1]\n", "routes[0].name", 2, "lower-case"),
    ("routes:\n  - name: default\n    backends: [http://h:1]\n", "routes[0].name", 2, "top-level"),
    ("routes:\n  - name: a\n    path: api\n    backends: [http://h:1]\n", "routes[0].path", 3,
     "must start with '/'"),
    ("routes:\n  - name: a\n    path: /a?b\n    backends: [http://h:1]\n", "routes[0].path", 3,
     "no query"),
    ("routes:\n  - name: a\n", "routes[0]", 2, "needs `backends`"),
    ("routes:\n  - name: a\n    backends: [http://h:1, http://h:1]\n", "routes[0].backends[1]", 3,
     "listed twice"),
    ("routes: []\n", "backends", 1, "is required"),
    ("routes:\n  - name: a\n    backends: [http://h:1]\n    health_check: {interval: 1s, timeout: 2s}\n",
     "routes[0].health_check.timeout", 4, "must not be longer"),
], ids=["same-name", "same-rule", "same-rule-in-a-list", "unknown-key", "client-timeout",
        "host-with-port", "bad-name", "reserved-name", "relative-path", "path-with-query",
        "no-backends", "duplicate-backend", "no-routes-no-backends", "health-timeout"])
def test_route_errors_name_file_key_and_line(text, key, line, words):
    error = _error(text)
    assert (error.file, error.key, error.line) == ("conf.yaml", key, line)
    assert words in str(error)


@pytest.mark.parametrize("path,instead", [
    ("/api/*", "write `path: /api/`: a prefix, matched at a segment boundary"),
    ("/api*", "write `path: /api`: a prefix, matched at a segment boundary"),
    ("/v1/*/users", "write `path: /v1/`"),
    ("/*", "leave `path` out for any path"),
    ("'*'", "leave `path` out for any path"),
])
def test_a_wildcard_in_a_route_path_is_an_error_saying_what_to_write(path, instead):
    error = _error(f"routes:\n  - name: api\n    path: {path}\n    backends: [http://h:1]\n")
    assert (error.key, error.line, error.column) == ("routes[0].path", 3, 11)
    assert "a route's path is a prefix, not a pattern" in str(error) and instead in str(error)


TLS = MINIMAL + """tls:
  certificates:
    - cert: certs/site.pem
      key: /etc/site.key
  min_version: 1.3
  redirect_from: 80
  hsts: 1h
"""


def test_tls_files_are_taken_from_the_config_file_s_folder():
    config = parse(TLS, "/srv/myproxy/c.yaml", environ={})
    (files,) = config.tls.certificates
    assert (files.cert, files.key) == ("/srv/myproxy/certs/site.pem", "/etc/site.key")
    assert (files.cert_line, files.key_line) == (5, 6)
    assert (config.tls.min_version, config.tls.redirect_from, config.tls.hsts) == ("1.3", 80, 3600.0)
    assert config.origins["tls.hsts"] == "file" and config.origins["tls.min_version"] == "file"


def test_without_tls_the_port_is_plain_http():
    assert parse(MINIMAL, "c.yaml", environ={}).tls is None


@pytest.mark.parametrize("tls,message", [
    ("tls: yes\n", "c.yaml:3:6: tls: expected a mapping with `certificates`"),
    ("tls:\n  certificates: []\n", "c.yaml:4:17: tls.certificates: expected a non-empty list"),
    ("tls:\n  certificates:\n    - cert: a.pem\n", "c.yaml:5:7: tls.certificates[0]: needs a `key` file"),
    ("tls:\n  certificates:\n    - {cert: a.pem, key: a.key, chain: x}\n",
     "c.yaml:5:33: tls.certificates[0].chain: unknown key"),
    ("tls:\n  certificates: [{cert: a, key: b}]\n  min_version: 1.1\n",
     "c.yaml:5:16: tls.min_version: expected one of 1.2, 1.3; got '1.1'"),
    ("tls:\n  certificates: [{cert: a, key: b}]\n  redirect_from: 70000\n",
     "c.yaml:5:18: tls.redirect_from: must be a TCP port"),
    ("tls:\n  certificates: [{cert: a, key: b}]\n  hsts: soon\n", "c.yaml:5:9: tls.hsts: 'soon' is not a duration"),
    ("tls:\n  certificats: []\n", "c.yaml:4:3: tls.certificats: unknown key (did you mean `certificates`?)"),
    ("port: 8443\ntls:\n  certificates: [{cert: a, key: b}]\n  redirect_from: 8443\n",
     "tls.redirect_from: must not be the TLS `port` itself"),
])
def test_tls_errors_name_the_key_and_line(tls, message):
    with pytest.raises(ConfigError) as raised:
        parse(MINIMAL + tls, "c.yaml", environ={})
    assert message in str(raised.value)


@pytest.mark.parametrize("health,timeout,origin", [
    ("", 2.0, "default"),
    ("health_check: {interval: 0.5}\n", 0.5, "default, capped at health_check.interval"),
    ("health_check: {interval: 2s}\n", 2.0, "default"),
    ("health_check: {interval: 500ms, timeout: 100ms}\n", 0.1, "file"),
], ids=["no-interval", "short-interval", "interval-equal", "both-set"])
def test_an_unset_health_check_timeout_is_the_smaller_of_2s_and_the_interval(health, timeout, origin):
    config = parse(MINIMAL + health, environ={})
    assert config.health_check.timeout == timeout
    assert config.origins["health_check.timeout"] == origin


def test_an_explicit_health_check_timeout_longer_than_the_interval_names_both_lines():
    error = _error(MINIMAL + "health_check:\n  interval: 1s\n  timeout: 3s\n")
    assert (error.key, error.line) == ("health_check.timeout", 5)
    assert "must not be longer than health_check.interval (1s, line 4)" in str(error)
    error = _error(MINIMAL + "health_check:\n  timeout: 6s\n")
    assert (error.key, error.line) == ("health_check.timeout", 4)
    assert "health_check.interval (5s, its default)" in str(error)


def test_a_routes_unset_health_check_timeout_is_capped_by_its_own_interval():
    text = ("health_check: {interval: 10s}\nroutes:\n  - name: a\n    backends: [http://h:1]\n"
            "    path: /a\n    health_check: {interval: 500ms}\n  - name: b\n    path: /b\n"
            "    backends: [http://h:2]\n")
    a, b = parse(text, environ={}).routes
    assert (a.health_check.timeout, a.origins["health_check.timeout"]) == \
        (0.5, "default, capped at health_check.interval")
    assert (b.health_check.timeout, b.origins["health_check.timeout"]) == (2.0, "default")


def test_a_routes_health_check_timeout_longer_than_its_interval_names_the_intervals_line():
    error = _error("health_check: {interval: 1s}\nroutes:\n  - name: a\n    backends: [http://h:1]\n"
                   "    health_check: {timeout: 3s}\n")
    assert (error.key, error.line) == ("routes[0].health_check.timeout", 5)
    assert "health_check.interval (1s, line 1)" in str(error)
    error = _error("routes:\n  - name: a\n    backends: [http://h:1]\n"
                   "    health_check:\n      interval: 1s\n      timeout: 3s\n")
    assert "health_check.interval (1s, line 5)" in str(error)


def test_max_conns_and_the_queue_per_pool():
    config = parse("backends:\n  - url: http://a:1\n    max_conns: 4\n  - http://b:1\n"
                   "queue: {size: 3, timeout: 500ms}\n"
                   "routes:\n  - name: api\n    backends: [http://c:1]\n    queue: {size: 0}\n",
                   environ={})
    assert [b.max_conns for b in config.backends] == [4, 0]       # 0 = no cap
    api, default = config.pools
    assert (default.queue.size, default.queue.timeout) == (3, 0.5)
    assert (api.queue.size, api.queue.timeout) == (0, 0.5)       # its own size, the top's timeout
    assert parse(MINIMAL, environ={}).queue == QueueConfig(100, 10.0)


@pytest.mark.parametrize("text,key,words", [
    ("backends:\n  - url: http://a:1\n    max_conns: -1\n", "backends[0].max_conns", "at least 0"),
    (MINIMAL + "queue: {size: -2}\n", "queue.size", "at least 0"),
    (MINIMAL + "queue: {timeout: 0}\n", "queue.timeout", "more than 0"),
    (MINIMAL + "queue: {depth: 3}\n", "queue.depth", "unknown key"),
], ids=["negative-cap", "negative-size", "zero-timeout", "unknown-queue-key"])
def test_queue_errors_name_the_key(text, key, words):
    error = _error(text)
    assert error.key == key and words in str(error)


@pytest.mark.parametrize("value,words", [
    ("http://h:6379", "must be a redis:// or rediss:// URL"),
    ("redis://", "the URL names no host"),
])
def test_cluster_redis_must_be_a_redis_url_and_the_error_names_its_line(value, words):
    error = _error(MINIMAL + f"cluster:\n  redis: {value}\n")
    assert "conf.yaml:4" in str(error) and "cluster.redis" in str(error) and words in str(error)


def test_cluster_is_off_by_default_and_reads_redis_url_from_the_environment():
    assert not parse(MINIMAL, environ={}).cluster.enabled
    config = parse(MINIMAL + "cluster:\n  redis: ${REDIS_URL:-}\n  timeout: 20ms\n",
                   environ={"REDIS_URL": "rediss://u:pw@r.example:6380/1"})
    assert config.cluster.enabled and config.cluster.timeout == 0.02
    assert config.cluster.prefix == "myproxy"
    assert "pw" not in repr(config.cluster)


def test_a_redis_password_is_shown_as_stars():
    from app.config import format_value, redact_url
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:s3cret@h/0?ssl_cert_reqs=none") == \
        "rediss://user:***@h/0?ssl_cert_reqs=none"
    assert redact_url("redis://h:6379") == "redis://h:6379"
    assert format_value("cluster.redis", "redis://u:s3cret@h:1") == "redis://u:***@h:1"
