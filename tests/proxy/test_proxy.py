"""The WSGI surface, driven by webtest, against real backends on 127.0.0.1."""
import gzip

import pytest
from webtest import TestApp

from app import create_app
from app.config import parse
from tests.backends import TestBackend, free_port


def make_app(urls, extra=""):
    text = "backends:\n" + "".join(f"  - {url}\n" for url in urls) + extra
    return create_app(parse(text, environ={}))


@pytest.fixture
def client(backend):
    return TestApp(make_app([backend.url]), lint=False,
                   extra_environ={"REMOTE_ADDR": "203.0.113.9"})


def test_round_robin_over_three_backends(backends):
    client = TestApp(make_app([b.url for b in backends]), lint=False)
    bodies = [client.get("/").text for _ in range(6)]
    assert bodies == ["backend a", "backend b", "backend c"] * 2


def test_method_target_and_body_are_forwarded(client, backend):
    response = client.post("/echo?x=1&y=%20", params=b"payload", content_type="text/plain")
    assert response.body == b"payload"
    seen = backend.requests[-1]
    assert (seen.method, seen.target, seen.body) == ("POST", "/echo?x=1&y=%20", b"payload")
    assert seen.header("Content-Type") == "text/plain"


def test_raw_target_is_forwarded_byte_for_byte(client, backend):
    client.get("/", extra_environ={"RAW_URI": "/a%2Fb/../c?q=%zz&r=%20"})
    assert backend.requests[-1].target == "/a%2Fb/../c?q=%zz&r=%20"


def test_backend_path_prefix_is_prepended(backend):
    client = TestApp(make_app([backend.url + "/api"]), lint=False)
    client.get("/", extra_environ={"RAW_URI": "/users?id=1"})
    assert backend.requests[-1].target == "/api/users?id=1"


def test_no_client_library_headers_are_added(client, backend):
    client.get("/", headers={"X-Custom": "1"})
    names = {name.lower() for name, _ in backend.requests[-1].headers}
    assert not names & {"user-agent", "accept", "accept-encoding", "cookie"}
    assert "x-custom" in names


def test_hop_by_hop_request_headers_are_removed(client, backend):
    client.get("/", headers={"Connection": "keep-alive, X-Secret", "X-Secret": "1",
                             "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x",
                             "TE": "trailers", "X-Kept": "yes"})
    names = {name.lower() for name, _ in backend.requests[-1].headers}
    assert not names & {"x-secret", "keep-alive", "te"}
    assert backend.requests[-1].header("X-Kept") == "yes"
    # Not hop-by-hop in RFC 9110 (§7.6.1, §11.7.2): for whoever is behind the proxy.
    assert backend.requests[-1].header("Proxy-Authorization") == "Basic x"


def test_forwarded_headers_replace_what_an_untrusted_client_sent(client, backend):
    client.get("/", headers={"Host": "example.com", "X-Forwarded-For": "6.6.6.6",
                             "X-Forwarded-Host": "evil", "X-Forwarded-Proto": "gopher"})
    seen = backend.requests[-1]
    assert seen.header("X-Forwarded-For") == "203.0.113.9"
    assert seen.header("X-Forwarded-Host") == "example.com"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("Host") == "example.com"
    assert seen.header("Via") == "1.0 myproxy"       # webtest speaks HTTP/1.0


def test_trusted_proxy_headers_are_kept_and_appended(backend):
    app = make_app([backend.url], "forwarded:\n  trusted_proxies: [10.0.0.0/8]\n")
    TestApp(app, lint=False).get("/", headers={"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"},
                                 extra_environ={"REMOTE_ADDR": "10.1.1.1"})
    seen = backend.requests[-1]
    assert seen.header("X-Forwarded-For") == "1.2.3.4, 10.1.1.1"
    assert seen.header("X-Forwarded-Proto") == "https"


def test_preserve_host_false_sends_the_backends_host(backend):
    app = make_app([backend.url], "forwarded:\n  preserve_host: false\n")
    TestApp(app, lint=False).get("/", headers={"Host": "example.com"})
    assert backend.requests[-1].header("Host") == f"127.0.0.1:{backend.port}"


def test_request_id_is_generated_sent_and_returned(client, backend):
    response = client.get("/", headers={"X-Request-ID": "spoofed"})
    request_id = response.headers["X-Request-ID"]
    assert request_id != "spoofed" and len(request_id) >= 16
    assert backend.requests[-1].header("X-Request-ID") == request_id


def test_repeated_set_cookie_lines_stay_separate(client):
    response = client.get("/cookie")
    assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_cookies_do_not_leak_between_clients(client, backend):
    client.get("/cookie")
    client.reset()
    client.get("/")
    assert backend.requests[-1].header("Cookie") is None


def test_redirects_go_back_to_the_client(client, backend):
    response = client.get("/redirect")
    assert response.status_int == 302
    assert response.headers["Location"] == "/elsewhere"
    assert [r.target for r in backend.requests] == ["/redirect"]


def test_compressed_bodies_stay_compressed(backend):
    app = make_app([backend.url])

    def call(environ, start):
        return app(environ, start)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/gzip", "SERVER_NAME": "t", "SERVER_PORT": "80",
               "wsgi.input": None, "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1"}
    captured = {}
    body = b"".join(call(environ, lambda status, headers, exc=None: captured.update(h=dict(headers))))
    assert captured["h"]["Content-Encoding"] == "gzip"
    assert int(captured["h"]["Content-Length"]) == len(body)
    assert gzip.decompress(body) == b"hello gzip " * 100


def test_large_chunked_response_streams_through(client):
    response = client.get("/bytes?n=1000000&chunked=1")
    assert len(response.body) == 1_000_000


def test_backend_status_codes_pass_through(client):
    assert client.get("/status/404", status=404).body == b"status 404"
    assert client.get("/status/500", status=500).body == b"status 500"
    assert client.get("/status/204", status=204).body == b""


def test_refused_backend_is_502_naming_the_cause_with_expose_backends():
    app = make_app([f"http://127.0.0.1:{free_port()}"],
                   "retries:\n  attempts: 1\nexpose_backends: true\n")
    response = TestApp(app, lint=False).get("/", status=502)
    assert "connection refused" in response.text
    assert response.content_type == "text/plain"


def test_slow_backend_is_504(backend):
    app = make_app([backend.url], "timeouts:\n  read: 200ms\nretries:\n  attempts: 1\n")
    response = TestApp(app, lint=False).get("/slow?seconds=2", status=504)
    assert "did not answer in time" in response.text


def test_no_healthy_backend_is_503_with_retry_after(backend):
    app = make_app([backend.url])
    for item in app.balancer.backends:
        item.healthy = False
        item.last_error = "connection refused"
    response = TestApp(app, lint=False).get("/", status=503)
    assert response.headers["Retry-After"].isdigit()
    assert "no backend is available" in response.text
    assert backend.requests == []
