"""What a client sees of an error the proxy answers itself: the status, the route and the
request ID, never a backend's address or its failure unless ``expose_backends`` says so
(the log has them always); the same for ``Server-Timing``. Over real sockets under
``python wsgi.py`` and the Procfile's command."""
import pytest
from webtest import TestApp

from app import create_app
from app.config import parse
from app.errors import BadRequest, NoBackendAvailable, UpstreamConnectError, UpstreamTimeout
from tests.backends import TestBackend, free_port, wait_until
from tests.conftest import base_config
from tests.servers import serving
from tests.rawclient import request

def test_a_backend_failure_body_has_the_status_route_and_request_id_only():
    error = UpstreamConnectError("connection refused", backend="http://10.0.0.5:9000")
    assert error.body(route="api", request_id="abc") == \
        b"502 Bad Gateway: the backend failed (route=api request_id=abc)\n"


def test_with_detail_the_body_gives_the_failure_and_the_backend():
    error = UpstreamConnectError("connection refused")
    assert error.body(route="api", request_id="abc", detail=True,
                      backend="http://10.0.0.5:9000") == (
        b"502 Bad Gateway: the backend failed: connection refused "
        b"(route=api request_id=abc backend=http://10.0.0.5:9000)\n")


@pytest.mark.parametrize("error,text", [
    (NoBackendAvailable("route api: http://10.0.0.5:9000 down: connection refused"),
     b"503 Service Unavailable: no backend is available to serve this request\n"),
    (UpstreamTimeout("read timed out after 30s"),
     b"504 Gateway Timeout: the backend did not answer in time\n"),
], ids=["503", "504"])
def test_other_backend_errors_leave_their_detail_out(error, text):
    assert error.body(backend="http://10.0.0.5:9000") == text


def test_a_client_error_still_says_what_was_wrong_with_the_request():
    assert BadRequest("malformed Content-Length").body(request_id="abc") == \
        b"400 Bad Request: malformed Content-Length (request_id=abc)\n"


def test_expose_backends_puts_the_backend_and_its_failure_in_the_answer(backend):
    refused = f"http://127.0.0.1:{free_port()}"
    app = create_app(parse(f"backends: [{refused}]\nexpose_backends: true\n"
                           "retries:\n  attempts: 1\nhealth_check:\n  enabled: false\n",
                           environ={}))
    response = TestApp(app, lint=False).get("/", status=502)
    assert "connection refused" in response.text and f"backend={refused}" in response.text
    proxied = create_app(parse(f"backends: [{backend.url}]\nexpose_backends: true\n", environ={}))
    timing = TestApp(proxied, lint=False).get("/").headers["Server-Timing"]
    assert f'desc="{backend.url}"' in timing


@pytest.fixture(scope="module")
def live():
    started = TestBackend("ok").start()
    yield started
    started.stop()


@pytest.fixture(scope="module", params=("wsgi.py", "gunicorn"))
def proxy(request, live, tmp_path_factory):
    config = base_config([live.url], health_check={"enabled": False})
    del config["backends"]
    refused = f"http://127.0.0.1:{free_port()}"
    config["routes"] = [
        {"name": "ok", "host": "ok.test", "backends": [live.url]},
        {"name": "refused", "host": "refused.test", "backends": [refused],
         "retries": {"attempts": 1}},
        # Down after the first round of checks, which runs at start.
        {"name": "down", "host": "down.test", "backends": [refused],
         "health_check": {"enabled": True, "fall": 1}},
    ]
    with serving(request.param, tmp_path_factory, config) as process:
        process.refused = refused
        yield process


def send(port, host):
    return request(port, f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())


@pytest.mark.parametrize("host,status,text", [
    ("refused.test", 502, b"502 Bad Gateway: the backend failed"),
    ("down.test", 503, b"503 Service Unavailable: no backend is available to serve this request"),
], ids=["502", "503"])
def test_an_error_answer_names_no_backend_but_the_log_does(proxy, host, status, text):
    assert wait_until(lambda: send(proxy.port, host)[0] == status, timeout=10)
    code, headers, body = send(proxy.port, host)
    route = host.split(".")[0]
    assert (code, body) == (status, text + f" (route={route} request_id="
                            f"{headers['x-request-id']})\n".encode())
    assert "127.0.0.1" not in "".join(headers.values())
    proxy.wait_for(rf"request_id={headers['x-request-id']} .*backend=")
    assert proxy.refused in proxy.output       # the log has the rest


def test_server_timing_gives_the_times_without_the_backend(proxy, live):
    code, headers, _ = send(proxy.port, "ok.test")
    assert code == 200
    timing = headers["server-timing"]
    assert timing.startswith("upstream;dur=") and ", total;dur=" in timing
    assert "desc" not in timing and live.url not in timing
