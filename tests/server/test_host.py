"""Host validation on the wire (RFC 9112 §3.2), under ``python wsgi.py`` and gunicorn: an
invalid ``Host``, or absolute-form authority, is ``400`` and never reaches a backend; a
valid one reaches it unchanged."""
import pytest

from tests.conftest import base_config
from tests.rawbackend import read_until_closed, statuses
from tests.servers import SERVERS, serving
from tests.rawclient import connect, request


@pytest.fixture(scope="module", params=SERVERS)
def proxy(request, raw, tmp_path_factory):
    with serving(request.param, tmp_path_factory, base_config(
            [raw.url], health_check={"enabled": False}, retries={"attempts": 1},
            forwarded={"preserve_host": True})) as process:
        yield process


def refused(proxy, raw, head: str) -> list[int]:
    before = len(raw.received)
    with connect(proxy.port) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n")
        answer = read_until_closed(sock)
    assert len(raw.received) == before, raw.received[before:]
    return statuses(answer)


INVALID = {"space": "a b", "userinfo": "user@example.com", "unclosed-bracket": "[::1",
           "bare-ipv6": "::1", "port-not-digits": "example.com:80a", "two-ports": "h:80:80",
           "path": "host/path", "query": "host?q", "ipv6-zone": "[fe80::1%25eth0]",
           "bad-ipv6": "[1.2.3]", "raw-utf8": "caf\xc3\xa9.example", "backslash": "h\\x",
           "bad-pct": "%zz.example"}
VALID = {"name": "example.com", "name-port": "example.com:8080", "ipv6-port": "[::1]:8080",
         "ipv4": "127.0.0.1", "ipv6": "[::1]", "punycode": "xn--caf-dma.example"}


@pytest.mark.parametrize("host", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_host_is_400_and_reaches_no_backend(proxy, raw, host):
    assert refused(proxy, raw, f"GET / HTTP/1.1\r\nHost: {host}\r\n") == [400]


@pytest.mark.parametrize("target", ["http://[::1/x", "http://h:8x/", "http://a%zz/", "http://h^/"],
                         ids=["unclosed-bracket", "bad-port", "bad-pct", "caret"])
def test_an_invalid_absolute_form_authority_is_400(proxy, raw, target):
    assert refused(proxy, raw, f"GET {target} HTTP/1.1\r\nHost: t\r\n") == [400]


@pytest.mark.parametrize("host", VALID.values(), ids=VALID.keys())
def test_a_valid_host_reaches_the_backend_unchanged(proxy, raw, host):
    status, _, _ = request(proxy.port, f"GET / HTTP/1.1\r\nHost: {host}\r\n"
                                       f"Connection: close\r\n\r\n".encode())
    assert status == 200
    assert raw.received[-1].values("Host") == [host]
    assert raw.received[-1].values("X-Forwarded-Host") == [host]


def test_a_valid_absolute_form_authority_becomes_the_host(proxy, raw):
    status, _, _ = request(proxy.port, b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: ignored\r\n"
                                       b"Connection: close\r\n\r\n")
    assert status == 200
    assert raw.received[-1].values("Host") == ["[::1]:8080"]
