"""``Cluster``, in-process, against a real ``redis-server``: two ``Cluster`` objects over
their own balancers stand for two instances (``tests/lb/test_cluster_wire.py`` runs real
ones). Redis is stopped by PID to make the outage."""
import time
import uuid

import pytest

from app.config import BackendConfig, ClusterConfig, HealthCheckConfig, PassiveHealthConfig
from app.lb.balancer import Backend, Balancer, CheckResult
from app.lb.cluster import Cluster, RedisStore, SharedLimit
from app.lb.overrides import AdminStates, StoreUnavailable
from app.lb.ratelimit import RateLimit, RateTable
from tests.redisserver import RedisServer, needs_redis

pytestmark = needs_redis
URL = "http://127.0.0.1:9001"
PASSIVE = PassiveHealthConfig(failures=1, eject_for=5.0)
RULES = HealthCheckConfig(rise=1, fall=1)


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture
def server(tmp_path):
    started = RedisServer(tmp_path).start()
    yield started
    started.stop()


def instance(server, clock, prefix, timeout=0.05):
    balancer = Balancer([Backend(BackendConfig(URL), clock)], clock=clock)
    link = Cluster(ClusterConfig(server.url, prefix, timeout), lambda: {"default": balancer},
                   clock=clock)
    admin = AdminStates(RedisStore(link), clock=clock)
    link.apply = lambda: admin.apply({"default": balancer})
    return balancer.backends[0], link, admin, balancer


def ejected_in_one(server):
    """Two instances on one Redis, in step, then a backend ejected by failed requests in the
    first (not yet published)."""
    clock, prefix = Clock(), uuid.uuid4().hex
    (one, link_one, _, _), (two, link_two, _, _) = (instance(server, clock, prefix),
                                                    instance(server, clock, prefix))
    link_one.sync_once(), link_two.sync_once()
    clock.now += 1
    assert one.record_request("connect", PASSIVE) == "ejected"
    return clock, prefix, (one, link_one), (two, link_two)


def test_an_ejection_reaches_the_other_instance_and_its_return_ends_it_there(server):
    clock, prefix, (one, link_one), (two, link_two) = ejected_in_one(server)
    link_one.sync_once()                       # published
    link_two.sync_once()                       # taken
    assert two.state == "ejected" and two.ejected_until == one.ejected_until
    clock.now += 6                             # the ejection ran out; a check passes in one
    one.record_check(CheckResult(clock.now, True, 0.001, 200, None), RULES)
    assert one.state == "up"
    link_one.sync_once()                       # the return
    link_two.sync_once()
    assert two.state == "up"
    link_one.sync_once(), link_two.sync_once()
    assert (one.state, two.state) == ("up", "up")     # nothing comes back from the entries


def test_an_instance_started_later_takes_a_running_ejection(server):
    clock, prefix = Clock(), uuid.uuid4().hex
    one, link_one, _, _ = instance(server, clock, prefix)
    link_one.sync_once()
    one.record_request("connect", PASSIVE)
    link_one.sync_once()
    clock.now += 1
    late, link_late, _, _ = instance(server, clock, prefix)    # its backend's since is later
    link_late.sync_once()
    assert late.state == "ejected"


def test_an_admin_change_holds_in_the_other_instance_at_its_next_round(server):
    clock, prefix = Clock(), uuid.uuid4().hex
    (one, link_one, admin_one, pools_one), (two, link_two, _, _) = (
        instance(server, clock, prefix), instance(server, clock, prefix))
    link_one.sync_once(), link_two.sync_once()
    admin_one.change({"default": pools_one}, "default", URL, state="maint", weight=3)
    assert (one.admin_state, one.admin_weight) == ("maint", 3)
    link_two.sync_once()
    assert (two.admin_state, two.admin_weight) == ("maint", 3)


def test_with_redis_down_calls_fail_fast_states_stay_and_a_change_is_refused(server, caplog):
    clock, prefix = Clock(), uuid.uuid4().hex
    backend, link, admin, pools = instance(server, clock, prefix)
    link.sync_once()
    admin.change({"default": pools}, "default", URL, state="drain")
    server.stop()
    started = time.monotonic()
    link.sync_once()                           # fails within the timeout, takes it down
    assert time.monotonic() - started < 0.5
    assert link.up is False and backend.admin_state == "drain"     # the last values stay
    limit = SharedLimit(RateLimit("p", 1 / 3600, 0, RateTable(slots=64)), "p", link)
    started = time.monotonic()
    assert [limit.check("k") > 0 for _ in range(3)] == [False, True, True]   # local, at once
    assert time.monotonic() - started < 0.05
    with pytest.raises(StoreUnavailable):
        admin.change({"default": pools}, "default", URL, state="ready")
    assert backend.admin_state == "drain"
    for _ in range(3):
        link._next_ping = 0.0                  # the loop's next PINGs, now: each fails
        link.sync_once()
    assert caplog.text.count("failed (") == 1            # the outage, logged once
    server.start()
    for _ in range(2):
        link._next_ping = 0.0
        link.sync_once()
    assert link.up and caplog.text.count("answers again") == 1


def test_a_slow_redis_costs_a_request_no_more_than_the_timeout(server):
    clock = Clock()
    _, link, _, _ = instance(server, clock, uuid.uuid4().hex, timeout=0.05)
    link.sync_once()
    assert link.up
    client = server.client()
    limit = SharedLimit(RateLimit("p", 1 / 3600, 0, RateTable(slots=64)), "p", link)
    # CLIENT PAUSE holds every command for 2 s: a limited request waits 50 ms, then goes
    # local; the third late one in a row takes the link down.
    client.execute_command("CLIENT", "PAUSE", "2000", "ALL")
    waits = []
    for _ in range(3):
        assert link.up
        started = time.monotonic()
        waits.append(limit.check("k"))
        assert time.monotonic() - started < 0.05 + 0.1
    assert waits[0] == 0.0 and waits[1] > 0 and waits[2] > 0      # the local limit: 1/h
    assert link.up is False
    started = time.monotonic()
    limit.check("k")
    assert time.monotonic() - started < 0.01          # down: Redis is not called at all
    client.execute_command("CLIENT", "UNPAUSE")
    link._next_ping = 0.0                      # the loop's next PING, now
    link.sync_once()
    assert link.up


def test_a_stale_return_never_writes_over_a_newer_ejection(server):
    clock, prefix, (one, link_one), (two, link_two) = ejected_in_one(server)
    link_one.sync_once()
    link_two.sync_once()                       # both know the first ejection
    clock.now += 6                             # it ran out; a check passes in two
    two.record_check(CheckResult(clock.now, True, 0.001, 200, None), RULES)
    assert two.state == "up"
    clock.now += 1
    one.record_check(CheckResult(clock.now, True, 0.001, 200, None), RULES)
    assert one.record_request("connect", PASSIVE) == "ejected"   # a second, newer ejection
    link_one.sync_once()                       # published first ...
    link_two._exchange({("default", URL): [clock.now - 8, clock.now - 2]})   # ... two's stale view
    third = instance(server, clock, prefix)[0:2]
    third[1].sync_once()
    assert third[0].state == "ejected"         # the newer ejection is what Redis holds
