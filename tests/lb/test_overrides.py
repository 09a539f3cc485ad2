"""Admin states (drain, maint, run-time weights) and their stores: plain asserts, a temp dir."""
import os

import pytest

from app.config import BackendConfig
from app.errors import NoBackendAvailable
from app.lb.balancer import Backend, Balancer
from app.lb.overrides import AdminStates, BadField, FileStore, MemoryStore, UnknownTarget
from app.lb.shared import DEFAULT_POOL, GroupView
from app.server.group import ProcessGroup

URLS = ("http://h:1", "http://h:2", "http://h:3")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def pools(clock=None, slow_start=0.0, urls=URLS):
    clock = clock or Clock()
    backends = [Backend(BackendConfig(url), clock) for url in urls]
    return {DEFAULT_POOL: Balancer(backends, slow_start=slow_start, clock=clock)}


def chosen(balancer, count=12):
    return {balancer.choose().url for _ in range(count)}


def test_drain_takes_no_new_requests_but_a_bound_one_may_still_go():
    group = pools()
    states = AdminStates(MemoryStore())
    backend, before, after = states.change(group, DEFAULT_POOL, "http://h:2", state="drain")
    assert (before.state, after.state, backend.admin_state) == ("ready", "drain", "drain")
    assert chosen(group[DEFAULT_POOL]) == {"http://h:1", "http://h:3"}
    assert backend.serving and not backend.available      # a sticky request may still go


def test_maint_takes_nothing_and_ready_brings_it_back():
    group = pools()
    states = AdminStates(MemoryStore())
    states.change(group, DEFAULT_POOL, "http://h:1", state="maint")
    assert "http://h:1" not in chosen(group[DEFAULT_POOL])
    states.change(group, DEFAULT_POOL, "http://h:1", state="ready")
    assert chosen(group[DEFAULT_POOL]) == set(URLS)


def test_with_every_backend_drained_the_503_says_why():
    group = pools(urls=URLS[:1])
    AdminStates(MemoryStore()).change(group, DEFAULT_POOL, "http://h:1", state="maint")
    with pytest.raises(NoBackendAvailable, match=r"http://h:1 in maint \(admin\)"):
        group[DEFAULT_POOL].choose()


def test_a_weight_set_here_replaces_the_configured_one_until_null():
    group = pools()
    states = AdminStates(MemoryStore())
    backend, _, _ = states.change(group, DEFAULT_POOL, "http://h:1", weight=4)
    picks = [group[DEFAULT_POOL].choose().url for _ in range(6)]
    assert picks.count("http://h:1") == 4 and backend.weight == 4
    _, _, after = states.change(group, DEFAULT_POOL, "http://h:1", weight=None)
    assert backend.weight == 1 and after.weight is None and after.state == "ready"
    states.change(group, DEFAULT_POOL, "http://h:1", weight=0)
    assert "http://h:1" not in chosen(group[DEFAULT_POOL])


@pytest.mark.parametrize("change, field", [
    ({"state": "drained"}, "state"), ({"state": None}, "state"), ({"weight": -1}, "weight"),
    ({"weight": 1.5}, "weight"), ({"weight": "2"}, "weight"), ({"weight": True}, "weight"),
], ids=["unknown-state", "null-state", "negative", "float", "string", "bool"])
def test_a_bad_value_names_its_field_and_changes_nothing(change, field):
    group = pools()
    states = AdminStates(MemoryStore())
    with pytest.raises(BadField) as error:
        states.change(group, DEFAULT_POOL, "http://h:1", **change)
    assert error.value.field == field
    assert states.store.load() == {}


@pytest.mark.parametrize("pool, url", [("api", "http://h:1"), (DEFAULT_POOL, "http://h:9")])
def test_an_unknown_route_or_backend_is_refused(pool, url):
    with pytest.raises(UnknownTarget):
        AdminStates(MemoryStore()).change(pools(), pool, url, state="drain")


def test_back_to_ready_ramps_up_under_slow_start_from_the_change():
    clock = Clock()
    group = pools(clock, slow_start=10)
    balancer = group[DEFAULT_POOL]
    states = AdminStates(MemoryStore(), clock)
    backend, _, _ = states.change(group, DEFAULT_POOL, "http://h:1", state="maint")
    clock.now += 60
    states.change(group, DEFAULT_POOL, "http://h:1", state="ready")
    assert balancer.weight_of(backend, clock.now) == pytest.approx(0.05)   # the floor
    assert balancer.weight_of(backend, clock.now + 5) == pytest.approx(0.5)
    assert balancer.weight_of(backend, clock.now + 10) == 1
    # A weight-only change does not restart the ramp.
    states.change(group, DEFAULT_POOL, "http://h:1", weight=2)
    assert balancer.weight_of(backend, clock.now + 10) == 2


def test_a_file_store_shares_changes_between_workers_and_a_new_one_starts_with_them(tmp_path):
    one, two = pools(), pools()
    first, second = AdminStates(FileStore(str(tmp_path))), AdminStates(FileStore(str(tmp_path)))
    first.change(one, DEFAULT_POOL, "http://h:1", state="drain")
    second.change(two, DEFAULT_POOL, "http://h:2", weight=3)     # read, changed, written: both kept
    first.apply(one)
    second.apply(two)
    for group in (one, two):
        backends = group[DEFAULT_POOL].backends
        assert [(b.admin_state, b.weight) for b in backends] == [("drain", 1), ("ready", 3), ("ready", 1)]
    fresh = pools()
    AdminStates(FileStore(str(tmp_path))).apply(fresh)          # a replaced worker
    assert fresh[DEFAULT_POOL].backends[0].admin_state == "drain"
    first.change(one, DEFAULT_POOL, "http://h:1", state="ready")
    second.apply(two)
    assert two[DEFAULT_POOL].backends[0].admin_state == "ready"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_retain_forgets_the_backends_a_reload_removed(tmp_path):
    group = pools()
    states = AdminStates(FileStore(str(tmp_path)))
    states.change(group, DEFAULT_POOL, "http://h:1", state="drain")
    states.change(group, DEFAULT_POOL, "http://h:3", state="maint")
    states.retain(pools(urls=URLS[:2]))
    assert set(states.store.load()) == {(DEFAULT_POOL, "http://h:1")}
    back = pools()
    states.apply(back)
    assert [b.admin_state for b in back[DEFAULT_POOL].backends] == ["drain", "ready", "ready"]


def test_the_group_round_applies_the_file_in_every_worker(tmp_path):
    group_a, group_b = pools(), pools()
    views = []
    for group, pid in ((group_a, os.getpid()), (group_b, os.getppid())):
        views.append(GroupView(lambda group=group: group, ProcessGroup(str(tmp_path), pid),
                               admin=AdminStates(FileStore(str(tmp_path)))))
    views[0].admin.change(group_a, DEFAULT_POOL, "http://h:2", state="maint")
    assert group_b[DEFAULT_POOL].backends[1].admin_state == "ready"
    views[1].sync_once()
    assert group_b[DEFAULT_POOL].backends[1].admin_state == "maint"
