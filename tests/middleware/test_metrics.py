"""/_myproxy/metrics after known traffic through real backends, read with prometheus_client's parser."""
import gevent
import pytest
import websocket
import yaml
from prometheus_client.parser import text_string_to_metric_families
from webtest import TestApp

from app import create_app
from app.config import load, parse
from tests.backends import free_port, wait_until
from tests.conftest import base_config
from tests.servers import SERVERS, launch
from tests.websocket_backend import WebSocketBackend
from tests.rawclient import connect, get, read_response


def make_app(urls, extra=""):
    text = "backends:\n" + "".join(f"  - {url}\n" for url in urls) + extra
    return create_app(parse(text, environ={}))


def client_of(app):
    return TestApp(app, lint=False, extra_environ={"REMOTE_ADDR": "127.0.0.1"})


def scrape(client) -> dict:
    """{(sample name, sorted labels): value} from the Prometheus text of /_myproxy/metrics."""
    response = client.get("/_myproxy/metrics")
    assert response.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_requests_are_counted_per_backend_and_status(backends):
    app = make_app([b.url for b in backends])
    client = client_of(app)
    for _ in range(2):                       # round-robin: a, b, c, a, b, c
        client.get("/")
        client.get("/status/404", status=404)
        client.get("/status/503", status=503)
    samples = scrape(client)
    a, b, c = (backend.url for backend in backends)
    assert value(samples, "myproxy_requests_total", route="default", backend=a, code="200") == 2
    assert value(samples, "myproxy_requests_total", route="default", backend=b, code="404") == 2
    assert value(samples, "myproxy_requests_total", route="default", backend=c, code="503") == 2
    assert value(samples, "myproxy_requests_total", route="default", backend=a, code="404") is None
    # Admin requests are not traffic.
    assert sum(v for (name, _), v in samples.items() if name == "myproxy_requests_total") == 6


def test_request_durations_fall_in_the_right_histogram_buckets(backend):
    app = make_app([backend.url])
    client = client_of(app)
    for _ in range(3):
        client.get("/")                      # a loopback round trip: well under 250 ms
    client.get("/slow?seconds=0.3")
    samples = scrape(client)
    url = backend.url
    assert value(samples, "myproxy_request_duration_seconds_count", route="default", backend=url) == 4
    assert value(samples, "myproxy_request_duration_seconds_bucket", route="default", backend=url, le="0.25") == 3
    assert value(samples, "myproxy_request_duration_seconds_bucket", route="default", backend=url, le="0.5") == 4
    assert value(samples, "myproxy_request_duration_seconds_bucket", route="default", backend=url, le="+Inf") == 4
    assert 0.3 <= value(samples, "myproxy_request_duration_seconds_sum", route="default", backend=url) < 1.5


def test_backend_up_follows_health_checks_and_checks_are_counted(backends):
    app = make_app([b.url for b in backends], "health_check:\n  fall: 2\n  rise: 1\n  timeout: 500ms\n")
    client = client_of(app)
    app.health.check_once()
    backends[1].stop()
    app.health.check_once()
    app.health.check_once()
    samples = scrape(client)
    a, b, c = (backend.url for backend in backends)
    assert [value(samples, "myproxy_backend_up", route="default", backend=u) for u in (a, b, c)] == [1, 0, 1]
    assert value(samples, "myproxy_health_checks_total", route="default", backend=a, result="pass") == 3
    assert value(samples, "myproxy_health_checks_total", route="default", backend=b, result="pass") == 1
    assert value(samples, "myproxy_health_checks_total", route="default", backend=b, result="fail") == 2
    backends[1].start()
    app.health.check_once()
    assert value(scrape(client), "myproxy_backend_up", route="default", backend=b) == 1


def test_in_flight_counts_a_request_waiting_on_its_backend(backend):
    app = make_app([backend.url])
    client = client_of(app)
    waiting = gevent.spawn(client.get, "/wait")
    assert wait_until(lambda: any(r.target == "/wait" for r in backend.requests), timeout=5)
    assert value(scrape(client), "myproxy_backend_in_flight", route="default", backend=backend.url) == 1
    backend.release.set()
    waiting.get(timeout=5)
    assert value(scrape(client), "myproxy_backend_in_flight", route="default", backend=backend.url) == 0


def test_upstream_errors_are_counted_by_kind(backend):
    dead = f"http://127.0.0.1:{free_port()}"
    app = make_app([dead], "retries:\n  attempts: 1\nhealth_check:\n  enabled: false\n")
    client = client_of(app)
    client.get("/", status=502)
    client.get("/", status=502)
    samples = scrape(client)
    assert value(samples, "myproxy_upstream_errors_total", route="default", backend=dead, kind="connect") == 2
    assert value(samples, "myproxy_requests_total", route="default", backend=dead, code="502") == 2


def test_requests_with_no_backend_are_counted_under_none(backend):
    app = make_app([backend.url], "health_check:\n  fall: 1\n  timeout: 500ms\n")
    client = client_of(app)
    backend.stop()
    app.health.check_once()
    client.get("/", status=503)
    assert value(scrape(client), "myproxy_requests_total", route="default", backend="none", code="503") == 1


def test_every_spec_metric_is_exposed_from_the_start(backend):
    client = client_of(make_app([backend.url]))
    names = {family.name for family in text_string_to_metric_families(
        client.get("/_myproxy/metrics").text)}
    # The parser names counter families without their _total suffix. (Requests by status
    # and upstream errors by kind appear with their first sample: a family with no sample
    # is not exposed.)
    assert {"myproxy_request_duration_seconds", "myproxy_backend_up",
            "myproxy_backend_in_flight", "myproxy_retries",
            "myproxy_health_checks", "myproxy_config_reloads"} <= names
    samples = scrape(client)
    assert value(samples, "myproxy_retries_total", route="default", backend=backend.url) == 0
    assert value(samples, "myproxy_config_reloads_total", result="success") == 0


def test_a_retry_counts_on_the_backend_it_went_to_and_the_error_on_the_one_that_failed(backend):
    refused = f"http://127.0.0.1:{free_port()}"
    app = make_app([refused, backend.url], "health_check:\n  enabled: false\n")
    client = client_of(app)
    assert client.get("/").text == "backend solo"       # refused first, then retried
    samples = scrape(client)
    assert value(samples, "myproxy_retries_total", route="default", backend=backend.url) == 1
    assert value(samples, "myproxy_retries_total", route="default", backend=refused) == 0
    assert value(samples, "myproxy_upstream_errors_total", route="default", backend=refused, kind="connect") == 1
    assert value(samples, "myproxy_requests_total", route="default", backend=backend.url, code="200") == 1
    assert value(samples, "myproxy_requests_total", route="default", backend=refused, code="200") is None


def test_an_error_after_the_answer_began_counts_against_the_backend(backend):
    app = make_app([backend.url])
    app.metrics.observe("default", backend.url, 200, 0.01, [(backend.url, None)], "reset")
    assert value(scrape(client_of(app)), "myproxy_upstream_errors_total",
                 route="default", backend=backend.url, kind="reset") == 1


def test_reloads_are_counted_by_result(write_config, backend):
    path = write_config(base_config([backend.url]))
    app = create_app(load(path))
    assert app.reload_file()
    write_config("backends: [\n")
    assert not app.reload_file()
    samples = scrape(client_of(app))
    assert value(samples, "myproxy_config_reloads_total", result="success") == 1
    assert value(samples, "myproxy_config_reloads_total", result="failure") == 1


def test_two_apps_in_one_process_keep_separate_counts(backend):
    first, second = make_app([backend.url]), make_app([backend.url])
    client_of(first).get("/")
    assert value(scrape(client_of(first)), "myproxy_requests_total", route="default", backend=backend.url, code="200") == 1
    assert value(scrape(client_of(second)), "myproxy_requests_total", route="default", backend=backend.url, code="200") is None


def test_openmetrics_is_served_to_scrapers_that_ask_for_it(backend):
    client = client_of(make_app([backend.url]))
    response = client.get("/_myproxy/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.content_type == "application/openmetrics-text"
    assert response.text.rstrip().endswith("# EOF")


def test_a_tunnel_counts_as_a_101_but_its_life_is_no_latency(start_proxy):
    ws_backend = WebSocketBackend("ws").start()
    try:
        proxy = start_proxy(base_config([ws_backend.url], health_check={"enabled": False}))
        ws = websocket.create_connection(f"ws://127.0.0.1:{proxy.port}/chat", timeout=10)
        request_id = ws.getheaders()["x-request-id"]
        ws.close()
        proxy.wait_for(rf"myproxy.access request_id={request_id} .*status=101")
        text = get(proxy.port, "/_myproxy/metrics")[2].decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert value(samples, "myproxy_requests_total", route="default", backend=ws_backend.url, code="101") == 1
        assert value(samples, "myproxy_request_duration_seconds_count", route="default", backend=ws_backend.url) == 0
    finally:
        ws_backend.stop()


def test_a_scrape_has_no_created_series_and_no_family_without_a_sample(backend):
    text = client_of(make_app([backend.url])).get("/_myproxy/metrics").text
    assert "_created" not in text
    for family in text_string_to_metric_families(text):
        assert family.samples, family.name          # HELP and TYPE alone: left out
    assert "myproxy_upstream_errors_total" not in text and "myproxy_tls_" not in text


def test_a_request_no_backend_took_makes_no_series_no_backend_can_have(backend):
    app = make_app([backend.url], "health_check:\n  fall: 1\n  timeout: 500ms\n")
    client = client_of(app)
    backend.stop()
    app.health.check_once()
    client.get("/", status=503)
    samples = scrape(client)
    none = {name for (name, labels) in samples if ("backend", "none") in labels}
    assert none == {"myproxy_requests_total", "myproxy_request_duration_seconds_bucket",
                    "myproxy_request_duration_seconds_count", "myproxy_request_duration_seconds_sum"}


def test_process_metrics_and_build_info_are_exposed(backend):
    import platform
    from app import __version__
    samples = scrape(client_of(make_app([backend.url])))
    assert value(samples, "myproxy_build_info", version=__version__,
                 python=platform.python_version()) == 1
    assert value(samples, "process_resident_memory_bytes") > 1_000_000
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "myproxy_client_connections") == 0      # no server: none


def scrape_port(port: int) -> dict:
    text = get(port, "/_myproxy/metrics")[2].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("kind", SERVERS)
def test_client_connections_add_up_over_workers_and_process_metrics_are_each_workers(
        kind, backend, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config([backend.url])))
    process = launch(kind, str(path), workers=2)
    held = []
    try:
        for _ in range(3):
            sock = connect(process.port)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: tester/1\r\n\r\n")
            assert read_response(sock)[0] == 200
            held.append(sock)                    # kept open, idle
        # The three held, and the scrape's own; each worker's count may be a second old.
        assert wait_until(lambda: value(scrape_port(process.port),
                                        "myproxy_client_connections") == 4, timeout=10)

        def resident():
            return {labels for (name, labels) in scrape_port(process.port)
                    if name == "process_resident_memory_bytes"}
        if kind == "wsgi.py":
            assert resident() == {()}
        else:                                    # one series per live worker, by pid
            assert wait_until(lambda: len(resident()) == 2, timeout=10)
            assert all([key for key, _ in labels] == ["pid"] for labels in resident())
        samples = scrape_port(process.port)
        assert [v for (name, _), v in samples.items() if name == "myproxy_build_info"] == [1]
        assert not any(name.endswith("_created") for name, _ in samples)
        process.wait_for(r"myproxy.access .*host=shop.test .*user_agent=tester/1")
    finally:
        for sock in held:
            sock.close()
        process.stop()
    assert "Traceback" not in process.output
