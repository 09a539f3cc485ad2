"""``GroupView``: the workers of a gunicorn group share one view of the backends, in-process.

Two views on one directory stand for two workers (this process's pid and its parent's, so
both count as alive); each has its own balancer over the same backend URLs.
"""
import os

from app.config import BackendConfig, HealthCheckConfig, PassiveHealthConfig
from app.lb.balancer import Backend, Balancer, CheckResult
from app.lb.capacity import RetryBudget
from app.lb.shared import DEFAULT_POOL, GroupView
from app.server.group import ProcessGroup

URLS = ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
RULES = HealthCheckConfig(rise=1, fall=1)
PASSIVE = PassiveHealthConfig(failures=1, eject_for=5.0)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def worker(directory, pid, clock, budget=None):
    balancer = Balancer([Backend(BackendConfig(url), clock) for url in URLS], clock=clock)
    view = GroupView(lambda: {DEFAULT_POOL: balancer}, ProcessGroup(str(directory), pid),
                     budget=budget, clock=clock)
    return balancer, view


def leader_and_follower(directory, clock):
    """Two workers that have each had their first round: (balancer, view) of each."""
    leader = worker(directory, os.getpid(), clock)
    follower = worker(directory, os.getppid(), clock)
    leader[1].sync_once()
    follower[1].sync_once()
    return leader, follower


def test_one_worker_leads_and_the_lock_passes_on_when_it_lets_go(tmp_path):
    first, second = ProcessGroup(str(tmp_path), os.getpid()), ProcessGroup(str(tmp_path), os.getppid())
    assert first.try_lead() and not second.try_lead()
    first.close()
    assert second.try_lead()


def test_followers_take_the_leaders_health_state_and_times(tmp_path):
    clock = Clock()
    (led, leader), (followed, follower) = leader_and_follower(tmp_path, clock)
    assert leader.leading and not follower.leading
    clock.now += 1
    led.backends[1].record_check(CheckResult(clock.now, False, 0.01, error="refused"), RULES)
    leader.sync_once()
    follower.sync_once()
    down = followed.backends[1]
    assert (down.state, down.since, down.last_error) == ("down", clock.now, "refused")
    assert [c.error for c in down.checks] == ["refused"]
    clock.now += 1
    led.backends[1].record_check(CheckResult(clock.now, True, 0.01), RULES)
    leader.sync_once()
    follower.sync_once()
    assert (down.state, down.recovered_at) == ("up", clock.now)   # slow start ramps alike


def test_an_ejection_in_one_worker_reaches_all_and_ends_with_the_leaders_check(tmp_path):
    clock = Clock()
    (led, leader), (followed, follower) = leader_and_follower(tmp_path, clock)
    clock.now += 1
    assert followed.record_request(followed.backends[0], "connect", PASSIVE) == "ejected"
    follower.sync_once()           # the follower's own ejection survives the leader's state
    assert followed.backends[0].state == "ejected"
    leader.sync_once()
    assert led.backends[0].state == "ejected"
    assert led.backends[0].ejected_until == followed.backends[0].ejected_until
    clock.now += 6                 # eject_for is over: the leader's next passing check
    led.backends[0].record_check(CheckResult(clock.now, True, 0.01), RULES)
    assert led.backends[0].state == "up"
    leader.sync_once()             # the follower's stale record does not eject it again
    follower.sync_once()
    leader.sync_once()
    assert led.backends[0].state == followed.backends[0].state == "up"


def test_the_retry_budget_counts_the_whole_group(tmp_path):
    clock = Clock()
    spent = RetryBudget(0.0, floor=2, clock=clock)
    fresh = RetryBudget(0.0, floor=2, clock=clock)
    _, one = worker(tmp_path, os.getpid(), clock, spent)
    _, other = worker(tmp_path, os.getppid(), clock, fresh)
    assert spent.try_spend() and spent.try_spend() and not spent.try_spend()
    one.sync_once()
    other.sync_once()
    assert not fresh.try_spend()   # the group's floor is spent, by the other worker


def test_status_totals_add_up_workers_dead_ones_included(tmp_path):
    clock = Clock()
    first, one = worker(tmp_path, os.getpid(), clock)
    second, other = worker(tmp_path, os.getppid(), clock)
    first.backends[0].requests, second.backends[0].requests = 3, 4
    second.backends[0].in_flight = 2
    one.sync_once()
    other.sync_once()
    ProcessGroup(str(tmp_path), 2 ** 22 + 7).publish(       # a worker that has died
        {"pid": 2 ** 22 + 7, "time": clock.now, "leader": False, "requests": 5, "in_flight": 9,
         "budget": {}, "pools": {DEFAULT_POOL: {URLS[0]: {"requests": 5, "errors": 1,
                                                          "in_flight": 9, "ejected": None}}}})
    one.sync_once()
    assert one.totals(DEFAULT_POOL, URLS[0]) == {"requests": 12, "errors": 1, "in_flight": 2}
    assert [w["pid"] for w in one.workers()] == sorted([os.getpid(), os.getppid()])
    assert one.requests() == 12


def routed_worker(directory, pid, clock):
    """A worker with two routes whose pools share their backend URLs: each URL is two
    members, one per route, with a state each."""
    pools = {name: Balancer([Backend(BackendConfig(url), clock) for url in URLS], clock=clock)
             for name in ("api", "site")}
    budgets = {name: RetryBudget(0.0, floor=1, clock=clock) for name in pools}
    view = GroupView(lambda: pools, ProcessGroup(str(directory), pid), clock=clock,
                     budgets=lambda: budgets)
    return pools, budgets, view


def test_an_ejection_reaches_the_same_routes_pool_in_every_worker_and_no_other(tmp_path):
    clock = Clock()
    leader_pools, _, leader = routed_worker(tmp_path, os.getpid(), clock)
    follower_pools, _, follower = routed_worker(tmp_path, os.getppid(), clock)
    leader.sync_once()
    follower.sync_once()
    clock.now += 1
    api = follower_pools["api"]
    assert api.record_request(api.backends[0], "connect", PASSIVE) == "ejected"
    follower.sync_once()
    leader.sync_once()
    assert leader_pools["api"].backends[0].state == "ejected"
    assert leader_pools["site"].backends[0].state == "up"       # the same URL, another route
    assert follower_pools["site"].backends[0].state == "up"


def test_each_routes_retry_budget_counts_that_route_across_the_group(tmp_path):
    clock = Clock()
    _, spent, one = routed_worker(tmp_path, os.getpid(), clock)
    _, fresh, other = routed_worker(tmp_path, os.getppid(), clock)
    assert spent["api"].try_spend() and not spent["api"].try_spend()
    one.sync_once()
    other.sync_once()
    assert not fresh["api"].try_spend()     # the group's floor for api is spent elsewhere
    assert fresh["site"].try_spend()        # site's is not
