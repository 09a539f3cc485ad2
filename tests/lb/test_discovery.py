"""DNS discovery: members from a real DNS server on 127.0.0.1 (tests.dnsserver), one lookup
round at a time (``resolve_once``), and the pool's membership (``Balancer.update_members``)."""
import collections
import logging
import random
import time

import gevent
import pytest

from app.config import BackendConfig, ResolverConfig, parse
from app.errors import StartupError
from app.lb.balancer import Balancer, Endpoint
from app.lb.discovery import MIN_RESOLVE, Discovery, LookupFailed, NameNotFound, lookup, make_resolver
pytest.importorskip("dnslib", reason="the test DNS server needs dnslib (requirements.txt)")
from tests.dnsserver import DnsServer  # noqa: E402

WEB = BackendConfig("http://web.test:8000", resolve=5.0)
API = BackendConfig("http://_http._tcp.api.test", resolve=5.0, srv="_http._tcp.api.test")


@pytest.fixture
def dns():
    server = DnsServer().start()
    yield server
    server.stop()


def discovery_for(dns, *templates, timeout=0.5, **balancer):
    pool = Balancer.from_configs(templates, **balancer)
    config = ResolverConfig(servers=(dns.address,), timeout=timeout)
    return Discovery(pool, lambda: config, rng=random.Random(1)), pool


def addresses(pool):
    return sorted(b.url for b in pool.backends)


def endpoints(*addresses, port=8000, weight=1):
    return [Endpoint(a, port, "web.test", weight) for a in addresses]


# --- membership: Balancer.update_members ---------------------------------------------------


def test_members_that_stay_keep_their_state_and_those_that_go_leave():
    pool = Balancer.from_configs([WEB])
    pool.update_members(WEB, endpoints("127.0.0.2", "127.0.0.3"))
    first, second = pool.backends
    first.requests, first.healthy, second.in_flight = 7, False, 1
    added, gone = pool.update_members(WEB, endpoints("127.0.0.2", "127.0.0.4"))
    assert [b.url for b in added] == ["http://web.test:8000 (127.0.0.4)"]
    assert gone == [second] and pool.leaving == [second]
    assert pool.backends[0] is first and first.requests == 7 and not first.healthy
    assert second not in pool.candidates()
    assert pool.sweep() == [] and pool.leaving == [second]     # still one in flight
    second.in_flight = 0
    assert pool.sweep() == [second] and pool.leaving == []


def test_a_member_that_comes_back_while_leaving_is_taken_back_as_it_was():
    pool = Balancer.from_configs([WEB])
    pool.update_members(WEB, endpoints("127.0.0.2", "127.0.0.3"))
    member = pool.backends[1]
    member.in_flight, member.requests = 1, 3
    pool.update_members(WEB, endpoints("127.0.0.2"))
    pool.update_members(WEB, endpoints("127.0.0.2", "127.0.0.3"))
    assert pool.backends[1] is member and pool.leaving == []


def test_a_member_has_its_address_for_connections_and_the_name_for_host():
    pool = Balancer.from_configs([WEB, API])
    pool.update_members(WEB, endpoints("::1"))
    pool.update_members(API, [Endpoint("127.0.0.2", 8001, "a.api.test", 5)])
    web, api = pool.backends
    assert (web.url, web.origin, web.netloc) == ("http://web.test:8000 (::1)", "http://[::1]:8000",
                                                  "web.test:8000")
    assert (api.url, api.origin, api.netloc, api.weight) == (
        "http://_http._tcp.api.test (127.0.0.2:8001)", "http://127.0.0.2:8001", "a.api.test:8001", 5)


def test_new_members_ramp_up_under_slow_start():
    now = [1000.0]
    pool = Balancer.from_configs([WEB], slow_start=10.0, clock=lambda: now[0])
    pool.update_members(WEB, endpoints("127.0.0.2"))
    now[0] += 5
    pool.update_members(WEB, endpoints("127.0.0.2", "127.0.0.3"))
    old, new = pool.backends
    assert pool.weight_of(old, now[0]) == pytest.approx(0.5)
    assert pool.weight_of(new, now[0]) == pytest.approx(0.05)


def test_an_answer_for_an_entry_a_reload_took_away_is_ignored():
    pool = Balancer.from_configs([WEB])
    pool.reload([BackendConfig("http://127.0.0.9:1")], "round_robin")
    assert pool.update_members(WEB, endpoints("127.0.0.2")) == ([], [])
    assert addresses(pool) == ["http://127.0.0.9:1"]


def test_a_reload_keeps_members_of_an_entry_that_stays_and_lets_go_of_the_others():
    other = BackendConfig("http://other.test:8000", resolve=5.0)
    pool = Balancer.from_configs([WEB, other])
    pool.update_members(WEB, endpoints("127.0.0.2"))
    pool.update_members(other, endpoints("127.0.0.3"))
    kept = pool.backends[0]
    heavier = BackendConfig("http://web.test:8000", weight=3, resolve=5.0)
    pool.reload([heavier], "round_robin")
    assert pool.backends == [kept] and kept.weight == 3
    assert [b.url for b in pool.leaving] == ["http://other.test:8000 (127.0.0.3)"]


def test_a_pool_without_members_yet_says_so():
    pool = Balancer.from_configs([WEB])
    with pytest.raises(Exception, match="web.test:8000: no address from DNS yet"):
        pool.choose()


# --- lookups against a real DNS server ------------------------------------------------------


def test_every_a_and_aaaa_address_is_a_member_on_the_urls_port(dns):
    dns.set("web.test", ["127.0.0.2", "127.0.0.3", "::1"])
    discovery, pool = discovery_for(dns, WEB)
    discovery.resolve_once()
    assert addresses(pool) == ["http://web.test:8000 (127.0.0.2)", "http://web.test:8000 (127.0.0.3)",
                               "http://web.test:8000 (::1)"]
    assert {b.port for b in pool.backends} == {8000}


def test_srv_records_give_target_port_weight_and_priority(dns):
    dns.set_srv("_http._tcp.api.test", [(10, 3, 8001, "a.api.test"), (10, 1, 8002, "b.api.test"),
                                        (20, 1, 8003, "c.api.test")],
                glue={"a.api.test": ["127.0.0.2"]})           # b and c are looked up
    dns.set("b.api.test", ["127.0.0.3"])
    dns.set("c.api.test", ["127.0.0.4"])
    discovery, pool = discovery_for(dns, API)
    discovery.resolve_once()
    by_port = {b.port: b for b in pool.backends}
    assert {p: (b.host, b.weight, b.config.backup) for p, b in by_port.items()} == {
        8001: ("127.0.0.2", 3, False), 8002: ("127.0.0.3", 1, False), 8003: ("127.0.0.4", 1, True)}
    assert dns.queries[("a.api.test", "A")] == 0              # the glue was used
    chosen = collections.Counter(pool.choose().port for _ in range(400))
    assert chosen == {8001: 300, 8002: 100}                   # weights 3:1; the backup idle


def test_a_failed_lookup_keeps_the_members_and_is_logged_once(dns, caplog):
    dns.set("web.test", ["127.0.0.2", "127.0.0.3"])
    discovery, pool = discovery_for(dns, WEB, timeout=0.2)
    discovery.resolve_once()
    before = list(pool.backends)
    caplog.set_level(logging.INFO, logger="myproxy.discovery")
    for mode in ("servfail", "drop", "servfail"):
        dns.mode = mode
        discovery.resolve_once()
        assert pool.backends == before
    dns.set("web.test", [])                                   # an empty answer: the same
    dns.mode = "answer"
    discovery.resolve_once()
    assert pool.backends == before
    failures = [r.getMessage() for r in caplog.records if "lookup failed" in r.getMessage()]
    assert len(failures) == 1 and "SERVFAIL" in failures[0], failures
    dns.set("web.test", ["127.0.0.2"])
    discovery.resolve_once()
    assert addresses(pool) == ["http://web.test:8000 (127.0.0.2)"]
    assert any("DNS answers again" in r.getMessage() for r in caplog.records)


def test_nxdomain_drains_the_members_only_on_the_second_answer(dns, caplog):
    dns.set("web.test", ["127.0.0.2"])
    discovery, pool = discovery_for(dns, WEB)
    discovery.resolve_once()
    dns.forget("web.test")
    caplog.set_level(logging.INFO, logger="myproxy.discovery")
    discovery.resolve_once()
    assert len(pool.backends) == 1
    discovery.resolve_once()
    assert pool.backends == [] and len(pool.leaving) == 0     # nothing in flight: gone at once
    messages = [r.getMessage() for r in caplog.records]
    assert any("not found" in m and "NXDOMAIN" in m for m in messages)
    assert any("members are drained" in m for m in messages)


def test_an_nxdomain_between_two_answers_drains_nothing(dns):
    dns.set("web.test", ["127.0.0.2"])
    discovery, pool = discovery_for(dns, WEB)
    discovery.resolve_once()
    for _ in range(3):
        dns.forget("web.test")
        discovery.resolve_once()
        dns.set("web.test", ["127.0.0.2"])
        discovery.resolve_once()
    assert len(pool.backends) == 1


def test_a_shorter_ttl_wins_but_never_below_one_second(dns):
    dns.set("web.test", ["127.0.0.2"], ttl=3)
    now = [100.0]
    discovery, pool = discovery_for(dns, WEB)
    discovery._clock = lambda: now[0]
    discovery.resolve_once()
    assert 3 * 0.9 <= discovery.next_delay() <= 3 * 1.1
    dns.set("web.test", ["127.0.0.2"], ttl=0)
    discovery.resolve_once()
    assert discovery.next_delay() == MIN_RESOLVE
    dns.set("web.test", ["127.0.0.2"], ttl=3600)
    discovery.resolve_once()
    assert 5 * 0.9 <= discovery.next_delay() <= 5 * 1.1      # resolve: 5s


def test_lookups_do_not_block_the_event_loop(dns):
    dns.mode = "drop"
    resolver = make_resolver(ResolverConfig(servers=(dns.address,), timeout=0.5))
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.02)) for _ in range(100)])
    started = time.monotonic()
    with pytest.raises(LookupFailed, match=r"within 0.5s from 127.0.0.1:\d+"):
        lookup(WEB, resolver)
    ticker.kill()
    assert 0.4 < time.monotonic() - started < 2
    assert len(ticks) >= 10


def test_servers_are_tried_in_order(dns):
    dead = DnsServer().start()
    dead.mode = "drop"
    dns.set("web.test", ["127.0.0.2"])
    resolver = make_resolver(ResolverConfig(servers=(dead.address, dns.address), timeout=1.0))
    answer = lookup(WEB, resolver)
    dead.stop()
    assert answer.server == dns.address and dead.queries[("web.test", "A")] >= 1


def test_start_fails_only_when_no_member_was_found_and_names_name_and_server(dns):
    dns.set("web.test", ["127.0.0.2"])
    missing = BackendConfig("http://missing.test:8000", resolve=5.0)
    discovery, pool = discovery_for(dns, WEB, missing)
    discovery.resolve_at_start()                     # one name answered: serve with it
    assert len(pool.backends) == 1
    discovery, pool = discovery_for(dns, missing)
    with pytest.raises(StartupError) as raised:
        discovery.resolve_at_start()
    assert "missing.test" in str(raised.value) and dns.address in str(raised.value)
    dns.mode = "drop"
    discovery, pool = discovery_for(dns, WEB, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(StartupError, match=r"within resolver.timeout \(0.3s\).*web.test"):
        discovery.resolve_at_start()
    assert time.monotonic() - started < 1.5


def test_nxdomain_for_a_name_that_never_had_members_is_just_no_member(dns):
    discovery, pool = discovery_for(dns, WEB)
    with pytest.raises(NameNotFound):
        lookup(WEB, discovery.resolver)
    discovery.resolve_once()
    assert pool.backends == [] and "NXDOMAIN" in discovery.describe()[0]["error"]


def test_a_reload_that_changes_the_port_resolves_the_new_entry_before_it_applies(dns):
    dns.set("web.test", ["127.0.0.2", "127.0.0.3"])
    discovery, pool = discovery_for(dns, WEB)
    discovery.resolve_once()
    moved = BackendConfig("http://web.test:9000", resolve=5.0)
    prepared = discovery.prepare([moved])
    assert addresses(pool)[0].endswith("(127.0.0.2)")        # nothing applied yet
    pool.reload([moved], "round_robin")
    discovery.apply_prepared(prepared)
    assert {b.port for b in pool.backends} == {9000} and len(pool.backends) == 2
    assert len(pool.leaving) == 2


def test_the_config_keys(tmp_path):
    config = parse("""
backends:
  - url: http://web.internal:8000
    resolve: 5s
  - srv: _http._tcp.api.service.consul
    scheme: https
resolver: {servers: ["127.0.0.1:8600", "::1"], timeout: 1s}
""")
    web, api = config.backends
    assert (web.url, web.resolve, web.discovered) == ("http://web.internal:8000", 5.0, True)
    assert (api.url, api.srv, api.resolve) == ("https://_http._tcp.api.service.consul",
                                               "_http._tcp.api.service.consul", 10.0)
    assert config.resolver == ResolverConfig(("127.0.0.1:8600", "[::1]:53"), 1.0)


@pytest.mark.parametrize("text, message", [
    ("backends: [{url: 'http://10.0.0.1:80', resolve: 5s}]", "is an IP address"),
    ("backends: [{url: 'http://web:80', resolve: 500ms}]", "at least 1s"),
    ("backends: [{srv: _http._tcp.x, weight: 2}]", "takes no `weight`"),
    ("backends: [{srv: web.example}]", "is not an SRV name"),
    ("backends: [{url: 'http://web', scheme: http}]", "`scheme` goes with `srv`"),
    ("backends: [http://a]\nresolver: {servers: ['dns.example:53']}", "is not an IP address"),
], ids=["ip-resolved", "too-often", "srv-weight", "srv-name", "url-scheme", "server-name"])
def test_config_errors_name_the_key_and_line(text, message):
    with pytest.raises(Exception) as raised:
        parse(text, "f.yaml")
    assert message in str(raised.value) and str(raised.value).startswith("f.yaml:")


# --- wired in the app (create_app): reload, metrics, status ---------------------------------


def app_config(dns, port, resolve="5s", extra=""):
    return parse(f"""
backends:
  - url: http://web.test:{port}
    resolve: {resolve}
resolver: {{servers: ["{dns.address}"], timeout: 500ms}}
health_check: {{interval: 1s, timeout: 300ms, rise: 1, fall: 1}}
{extra}""", "c.yaml", environ={})


def test_a_reload_that_changes_the_port_serves_the_new_members_from_its_first_request(dns):
    from webtest import TestApp
    from app import create_app
    from tests.backends import TestBackend
    old, new = TestBackend("old", 0, "127.0.0.2").start(), TestBackend("new", 0, "127.0.0.2").start()
    dns.set("web.test", ["127.0.0.2"])
    app = create_app(app_config(dns, old.port))
    try:
        app.start()
        client = TestApp(app, lint=False)
        assert client.get("/").text == "backend old"
        app.reload(app_config(dns, new.port))
        assert [client.get("/").text for _ in range(3)] == ["backend new"] * 3
        assert [b.port for b in app.balancer.backends] == [new.port]
        queries = dns.queries[("web.test", "A")]
        app.reload(app_config(dns, new.port, resolve="2s"))    # resolve changed: looked up now
        assert dns.queries[("web.test", "A")] == queries + 1
        app.reload(app_config(dns, new.port, resolve="2s"))    # nothing changed: no lookup
        assert dns.queries[("web.test", "A")] == queries + 1
    finally:
        app.stop()
        old.stop()
        new.stop()


def test_a_removed_members_metrics_go_when_it_does(dns):
    from webtest import TestApp
    from app import create_app
    from tests.backends import TestBackend
    two, three = TestBackend("two", 0, "127.0.0.2").start(), TestBackend("three", 0, "127.0.0.3").start()
    three.stop()
    three = TestBackend("three", two.port, "127.0.0.3").start()
    dns.set("web.test", ["127.0.0.2", "127.0.0.3"])
    app = create_app(app_config(dns, two.port))
    try:
        app.discovery.resolve_once()
        client = TestApp(app, lint=False)
        for _ in range(4):
            client.get("/")
        text = client.get("/_myproxy/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"}).text
        assert f'backend="http://web.test:{two.port} (127.0.0.3)",code="200"' in text
        dns.set("web.test", ["127.0.0.2"])
        app.discovery.resolve_once()
        status = client.get("/_myproxy/status", extra_environ={"REMOTE_ADDR": "127.0.0.1"}).json
        assert [b["address"] for b in status["backends"]] == ["127.0.0.2"]
        assert status["discovery"][0]["members"] == [f"http://web.test:{two.port} (127.0.0.2)"]
        text = client.get("/_myproxy/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"}).text
        assert "127.0.0.3" not in text and "127.0.0.2" in text
    finally:
        app.stop()
        two.stop()
        three.stop()


def test_a_reload_log_says_when_resolve_changes(dns):
    from app.reload import changes
    assert "http://web.test:1 resolve 5s->2s" in changes(app_config(dns, 1), app_config(dns, 1, "2s"))


def test_one_address_family_failing_keeps_its_members_and_takes_the_others(dns, caplog):
    dns.set("web.test", ["127.0.0.2", "::1"])
    discovery, pool = discovery_for(dns, WEB)
    discovery.resolve_once()
    v6 = next(b for b in pool.backends if b.host == "::1")
    dns.refuse = {"AAAA"}
    dns.set("web.test", ["127.0.0.3"])
    caplog.set_level(logging.INFO, logger="myproxy.discovery")
    discovery.resolve_once()
    discovery.resolve_once()
    assert addresses(pool) == ["http://web.test:8000 (127.0.0.3)", "http://web.test:8000 (::1)"]
    assert v6 in pool.backends
    partly = [r.getMessage() for r in caplog.records if "partly failed" in r.getMessage()]
    assert len(partly) == 1 and "REFUSED" in partly[0]
    dns.refuse = set()
    discovery.resolve_once()                       # AAAA answers again: now it has none
    assert addresses(pool) == ["http://web.test:8000 (127.0.0.3)"]
    assert any("DNS answers again" in r.getMessage() for r in caplog.records)


@pytest.fixture
def dnsmasq(tmp_path):
    """dnsmasq on 127.0.0.1 serving a hosts file (re-read on SIGHUP) and one SRV record."""
    import os
    import shutil
    import signal
    import subprocess
    from tests.backends import free_port, wait_until
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"      # sbin: not on every PATH
    if not os.path.exists(binary):
        pytest.skip("needs dnsmasq (Debian dnsmasq-base; .ci/run installs it)")
    hosts, log = tmp_path / "hosts", tmp_path / "dnsmasq.log"
    hosts.write_text("127.0.0.2 web.test\n127.0.0.3 web.test\n")
    port = free_port()
    output = open(log, "w")
    process = subprocess.Popen(
        [binary, "--no-daemon", "--no-resolv", "--no-hosts", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root", "--local-ttl=1",
         f"--addn-hosts={hosts}", "--srv-host=_http._tcp.api.test,a.api.test,8001,10,5",
         "--host-record=a.api.test,127.0.0.4", "--log-facility=-"],
        stdout=output, stderr=subprocess.STDOUT)
    if not wait_until(lambda: "read " in log.read_text() or process.poll() is not None, 10) \
            or process.poll() is not None:
        process.kill()
        output.close()
        pytest.skip(f"dnsmasq does not start here: {log.read_text()[-500:]}")

    def reread(text: str) -> None:
        reads = log.read_text().count(f"read {hosts}")
        hosts.write_text(text)
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: log.read_text().count(f"read {hosts}") > reads, 5)

    yield f"127.0.0.1:{port}", reread
    process.terminate()
    process.wait(timeout=5)
    output.close()


def test_a_real_dnsmasq_gives_the_members_and_its_changes(dnsmasq):
    address, reread = dnsmasq
    pool = Balancer.from_configs([WEB, API])
    config = ResolverConfig(servers=(address,), timeout=1.0)
    discovery = Discovery(pool, lambda: config)
    discovery.resolve_once()
    assert addresses(pool) == ["http://_http._tcp.api.test (127.0.0.4:8001)",
                               "http://web.test:8000 (127.0.0.2)", "http://web.test:8000 (127.0.0.3)"]
    reread("127.0.0.3 web.test\n127.0.0.5 web.test\n")
    discovery.resolve_once()
    assert [b.url for b in pool.members(WEB.url)] == ["http://web.test:8000 (127.0.0.3)",
                                                        "http://web.test:8000 (127.0.0.5)"]


def test_each_transition_after_a_partial_failure_is_logged_once(dns, caplog):
    """dnsmasq without an upstream refuses AAAA: a partial failure from the first lookup. A
    later full outage, its recovery, and the full recovery are each logged, once."""
    dns.set("web.test", ["127.0.0.2"])
    dns.refuse = {"AAAA"}
    discovery, pool = discovery_for(dns, WEB, timeout=0.2)
    caplog.set_level(logging.INFO, logger="myproxy.discovery")

    def logged():
        return [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records
                if "members changed" not in r.getMessage()]

    discovery.resolve_once()
    discovery.resolve_once()
    assert logged() == [("WARNING", "DNS lookup partly failed; the members it could not answer "
                                    "for stay")]
    dns.mode = "servfail"                          # the whole server fails: a full outage
    discovery.resolve_once()
    discovery.resolve_once()
    assert logged()[1:] == [("WARNING", "DNS lookup failed; the last members stay")]
    assert "SERVFAIL" in [r for r in caplog.records if "lookup failed" in r.getMessage()][0].getMessage()
    assert discovery.describe()[0]["error"]
    dns.mode = "answer"                            # back to the partial answer
    discovery.resolve_once()
    discovery.resolve_once()
    assert logged()[2:] == [("INFO", "DNS answers again, in part; the members it could not "
                                     "answer for stay")]
    assert addresses(pool) == ["http://web.test:8000 (127.0.0.2)"]
    described = discovery.describe()[0]
    assert described["error"] == "" and "REFUSED" in described["partial"]
    dns.refuse = set()                             # AAAA answers too
    discovery.resolve_once()
    discovery.resolve_once()
    assert logged()[3:] == [("INFO", "DNS answers again")]
    assert discovery.describe()[0]["partial"] == ""
