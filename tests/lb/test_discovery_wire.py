"""DNS discovery end to end, under ``python wsgi.py`` and gunicorn: a real DNS server in the
test (tests.dnsserver), backends on 127.0.0.2... (all loopback) and ::1, bounded load."""
import collections
import http.client
import time

import sys

import gevent
import pytest
import yaml
from gevent.event import Event

from tests.backends import TestBackend, free_port, wait_until
from tests.conftest import ProxyProcess
pytest.importorskip("dnslib", reason="the test DNS server needs dnslib (requirements.txt)")
from tests.dnsserver import DnsServer  # noqa: E402
from tests.servers import GUNICORN, SERVERS, serving

LOAD = "/load"


class Load:
    """A few keep-alive clients sending ``GET /load``, each about 300 a second at most
    (bounded in count; the test stops it)."""

    def __init__(self, port: int, clients: int = 3, limit: int = 50000):
        self.port, self.limit = port, limit
        self.results: list = []          # the body ("backend NAME") or what went wrong
        self.stopped = Event()
        self.greenlets = [gevent.spawn(self._run) for _ in range(clients)]

    def _run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stopped.is_set() and len(self.results) < self.limit:
            try:
                connection.request("GET", LOAD)
                response = connection.getresponse()
                body = response.read().decode()
                self.results.append(body if response.status == 200 else f"{response.status} {body}")
            except Exception as error:  # noqa: BLE001 - every failure is a result
                self.results.append(error)
                connection.close()
            gevent.sleep(0.003)

    def stop(self) -> list:
        self.stopped.set()
        gevent.joinall(self.greenlets, timeout=15)
        return [r for r in self.results if not (isinstance(r, str) and r.startswith("backend "))]


def served(backend: TestBackend) -> int:
    return sum(1 for seen in backend.requests if seen.target == LOAD)


@pytest.fixture
def dns():
    server = DnsServer().start()
    yield server
    server.stop()


def members_on(port: int, *hosts: str):
    started = [TestBackend(host.rsplit(".", 1)[-1].strip(":"), port, host).start() for host in hosts]
    return started


def dns_config(dns, backends, **more):
    return {"host": "127.0.0.1", "port": 0, "backends": backends,
            "resolver": {"servers": [dns.address], "timeout": "500ms"},
            "health_check": {"interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 2},
            "shutdown_timeout": "5s", "access_log": False, **more}


@pytest.mark.parametrize("kind", SERVERS)
def test_members_come_and_go_under_load_without_a_failed_request(kind, dns, tmp_path_factory):
    port = free_port()
    two, three, four, five = members_on(port, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
    dns.set("web.test", ["127.0.0.2", "127.0.0.3", "127.0.0.4"], ttl=1)
    config = dns_config(dns, [{"url": f"http://web.test:{port}", "resolve": "1s"}])
    try:
        with serving(kind, tmp_path_factory, config) as proxy:
            load = Load(proxy.port)
            try:
                # Three members share the load.
                assert wait_until(lambda: min(map(served, (two, three, four))) >= 20, timeout=10)
                assert served(five) == 0
                # A fourth appears: it gets traffic within one resolve interval (1 s, ±10%).
                dns.set("web.test", ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"], ttl=1)
                added = time.monotonic()
                assert wait_until(lambda: served(five) > 0, timeout=5)
                assert time.monotonic() - added < 1.1 + 1.0      # the interval, and a margin
                # One goes while a request to it is in flight: that request completes, and
                # no new one reaches it.
                for member in (two, four, five):
                    member.release.set()
                waiting = []
                while not any(seen.target == "/wait" for seen in three.requests) \
                        and len(waiting) < 40:
                    waiting.append(gevent.spawn(_get, proxy.port, "/wait"))
                    gevent.sleep(0.02)
                assert any(seen.target == "/wait" for seen in three.requests)
                dns.set("web.test", ["127.0.0.2", "127.0.0.4", "127.0.0.5"], ttl=1)
                assert wait_until(lambda: "leaving=127.0.0.3" in proxy.output, timeout=5), \
                    proxy.output
                gevent.sleep(0.2)     # requests chosen before the change have reached it
                before = served(three)
                gevent.sleep(1.5)
                assert served(three) == before
                three.release.set()
                gevent.joinall(waiting, timeout=10)
                assert [job.value for job in waiting] == [200] * len(waiting)
                # The DNS server stops: the members stay, and that is logged once.
                dns.stop()
                stopped = time.monotonic()
                assert wait_until(lambda: "DNS lookup failed" in proxy.output, timeout=5)
                counts = {m.name: served(m) for m in (two, four, five)}
                gevent.sleep(2.5)     # two more lookups, both failing
                assert all(served(m) > counts[m.name] for m in (two, four, five)), \
                    (counts, {m.name: served(m) for m in (two, four, five)}, len(load.results),
                     proxy.output[-3000:])
                assert proxy.output.count("DNS lookup failed") == 1, proxy.output
                assert time.monotonic() - stopped > 2
            finally:
                failures = load.stop()
            assert failures == [] and len(load.results) > 200
    finally:
        for member in (two, three, four, five):
            member.stop()


@pytest.mark.parametrize("kind", SERVERS)
def test_srv_weights_and_an_ipv6_member(kind, dns, tmp_path_factory):
    six, four = TestBackend("six", 0, "::1").start(), TestBackend("four", 0, "127.0.0.2").start()
    dns.set_srv("_http._tcp.api.test", [(10, 3, six.port, "six.api.test"),
                                        (10, 1, four.port, "four.api.test")], ttl=60)
    dns.set("six.api.test", ["::1"])
    dns.set("four.api.test", ["127.0.0.2"])
    config = dns_config(dns, [{"srv": "_http._tcp.api.test", "resolve": "10s"}])
    try:
        with serving(kind, tmp_path_factory, config) as proxy:
            statuses = collections.Counter(_get(proxy.port, LOAD) for _ in range(200))
            status = _status(proxy.port)
    finally:
        six.stop()
        four.stop()
    assert statuses == {200: 200}
    assert (served(six), served(four)) == (150, 50)        # 3:1, smooth round robin
    assert {b["url"] for b in status["backends"]} == {
        f"http://_http._tcp.api.test ([::1]:{six.port})",
        f"http://_http._tcp.api.test (127.0.0.2:{four.port})"}
    assert status["discovery"][0]["type"] == "SRV" and status["discovery"][0]["error"] == ""


@pytest.mark.parametrize("kind", SERVERS)
def test_start_fails_with_the_name_and_server_when_dns_gives_nothing(kind, dns, tmp_path):
    dns.mode = "servfail"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dns_config(dns, [{"url": "http://web.test:8000",
                                                     "resolve": "5s"}])))
    started = time.monotonic()
    if kind == "wsgi.py":
        process = ProxyProcess([sys.executable, "wsgi.py", "--config", str(path)])
    else:
        process = ProxyProcess([GUNICORN, "-k", "gevent", "wsgi:application"],
                               env={"MYPROXY_CONFIG": str(path), "PORT": str(free_port())})
    try:
        code = process.wait(timeout=15)
    finally:
        process.stop()
    assert code == (1 if kind == "wsgi.py" else 3), process.output   # gunicorn: boot error
    assert time.monotonic() - started < 10
    assert "cannot start" in process.output and "web.test" in process.output
    assert "SERVFAIL" in process.output and f"127.0.0.1@{dns.port}" in process.output
    assert process.output.count("Booting worker") <= 1           # no fork loop
    assert "Traceback" not in process.output


def test_check_probe_lists_what_each_name_gave(dns, tmp_path):
    member = TestBackend("m", 0, "127.0.0.2").start()
    dns.set("web.test", ["127.0.0.2"], ttl=30)
    dns.set("gone.test", [])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dns_config(dns, [
        {"url": f"http://web.test:{member.port}", "resolve": "5s"},
        {"url": "http://gone.test:80", "resolve": "5s"}])))
    process = ProxyProcess([sys.executable, "wsgi.py", "--check", "--probe", "--config", str(path)])
    try:
        code = process.wait(timeout=15)
    finally:
        member.stop()
    output = process.output
    assert code == 1, output                       # one name gave nothing
    assert f"http://web.test:{member.port}  A/AAAA  1 member(s), ttl 30s, from {dns.address}" in output
    assert f"http://web.test:{member.port} (127.0.0.2)  up" in output
    assert "http://gone.test:80  FAILED  gone.test has no A or AAAA record" in output


def _get(port: int, target: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _status(port: int) -> dict:
    import json
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/_myproxy/status")
    return json.loads(connection.getresponse().read())


def test_check_probe_passes_a_name_that_resolved_through_one_family(dns, tmp_path):
    """dnsmasq as the README sets it up refuses AAAA for a name it knows only an IPv4 address
    of: the name resolved, so no FAILED; the refused question is shown."""
    member = TestBackend("m", 0, "127.0.0.2").start()
    dns.set("web.test", ["127.0.0.2"], ttl=30)
    dns.refuse = {"AAAA"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dns_config(dns, [
        {"url": f"http://web.test:{member.port}", "resolve": "5s"}])))
    process = ProxyProcess([sys.executable, "wsgi.py", "--check", "--probe", "--config", str(path)])
    try:
        code = process.wait(timeout=15)
    finally:
        member.stop()
    output = process.output
    assert code == 0, output
    assert "FAILED" not in output
    assert f"http://web.test:{member.port}  A/AAAA  1 member(s), ttl 30s, from {dns.address}" in output
    assert "partly failed (its members stay): web.test AAAA:" in output and "REFUSED" in output
    assert f"http://web.test:{member.port} (127.0.0.2)  up" in output


@pytest.mark.parametrize("kind", ["wsgi.py", "gunicorn"])
def test_a_running_proxy_logs_each_dns_transition_after_a_refused_aaaa(kind, dns, tmp_path_factory):
    """dnsmasq as the README sets it up refuses AAAA: a partial failure from the start. A
    full outage later, its recovery, and the full recovery are each logged once."""
    member = TestBackend("m", 0, "127.0.0.2").start()
    dns.set("web.test", ["127.0.0.2"], ttl=1)
    dns.refuse = {"AAAA"}
    config = dns_config(dns, [{"url": f"http://web.test:{member.port}", "resolve": "1s"}])
    steps = [("servfail", {"AAAA"}, "DNS lookup failed; the last members stay"),
             ("answer", {"AAAA"}, "DNS answers again, in part"),
             ("answer", set(), "DNS answers again:")]
    try:
        with serving(kind, tmp_path_factory, config) as proxy:
            assert wait_until(lambda: "DNS lookup partly failed" in proxy.output, timeout=10)
            for mode, refused, logged in steps:
                dns.mode, dns.refuse = mode, refused
                assert wait_until(lambda: logged in proxy.output, timeout=10), proxy.output
            assert _get(proxy.port, LOAD) == 200
    finally:
        member.stop()
    for logged in ("DNS lookup partly failed", *(step[2] for step in steps)):
        assert proxy.output.count(logged) == 1, proxy.output
