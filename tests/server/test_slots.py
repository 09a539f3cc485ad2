"""The group's slot table: max_conns for the workers together. The table between two
columns in one process, then a real gunicorn group of 3 workers against a backend that
counts how many requests it holds at once."""
import os
import subprocess
import sys

import gevent
import yaml

from app.server.slots import SlotTable
from tests.backends import wait_until
from tests.conftest import base_config
from tests.lb.test_capacity import counting, get  # noqa: F401 - the fixture and the client
from tests.servers import launch
from tests.rawclient import queue_depth


def test_the_group_sum_is_capped_across_columns(tmp_path):
    first, second = SlotTable(str(tmp_path)), SlotTable(str(tmp_path))
    assert first.take("api", "http://a", 2) and second.take("api", "http://a", 2)
    assert first.column != second.column
    assert not first.take("api", "http://a", 2) and not second.take("api", "http://a", 2)
    assert first.count("api", "http://a") == 2
    assert second.take("api", "http://b", 2)          # another backend, its own count
    assert second.release("api", "http://a") is None  # nobody waits
    assert first.take("api", "http://a", 2)
    second.wait("api", 1)
    assert first.waiting("api") == 1


def test_a_freed_slot_goes_to_the_worker_whose_first_waiter_came_first(tmp_path):
    first, second = SlotTable(str(tmp_path)), SlotTable(str(tmp_path))
    assert first.take("api", "http://a", 1)
    early, late = SlotTable.ticket(), SlotTable.ticket() + 5
    second.wait("api", 1)
    second.since("api", early)
    first.wait("api", 1)
    first.since("api", late)
    assert not first.first_here("api") and second.first_here("api")
    assert first.release("api", "http://a") == second._words[second.column]   # poke it
    second.wait("api", -1)
    second.since("api", 0)                            # its waiter was served
    assert first.first_here("api")
    assert first.take("api", "http://a", 1)
    assert first.release("api", "http://a") is None   # its own waiter is first now


def test_a_dead_workers_slots_are_freed(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", "import sys; from app.server.slots import SlotTable; "
         "t = SlotTable(sys.argv[1]); assert t.take('api', 'http://a', 3); "
         "assert t.take('api', 'http://a', 3)", str(tmp_path)],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), check=True)
    assert child.returncode == 0
    table = SlotTable(str(tmp_path))
    assert table.count("api", "http://a") in (0, 2)   # 0 when it took the dead one's column
    table.sweep()
    assert table.count("api", "http://a") == 0
    assert table.take("api", "http://a", 1)


def test_gunicorn_workers_together_never_exceed_max_conns(tmp_path, counting):  # noqa: F811
    backend = counting()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(
        [{"url": backend.url, "max_conns": 2}], health_check={"enabled": False},
        queue={"size": 50, "timeout": "10s"})))
    process = launch("gunicorn", str(path), workers=3)
    try:
        clients = [gevent.spawn(get, process.port, f"/wait?n={n}") for n in range(12)]
        assert wait_until(lambda: len(backend.requests) == 2, timeout=10)
        assert wait_until(lambda: queue_depth(process.port) == 10, timeout=10)   # the rest wait
        assert len(backend.requests) == 2
        backend.release.set()             # now each request answers at once
        gevent.joinall(clients, timeout=20)
        assert [client.value[0] if client.value else None for client in clients] == [200] * 12
        assert backend.most == 2
    finally:
        process.stop()
    assert "Traceback" not in process.output, process.output


def test_a_poke_wakes_the_worker_it_names(tmp_path):
    listener, poker = SlotTable(str(tmp_path)), SlotTable(str(tmp_path))
    woken = []
    listener.start(woken.append)
    try:
        assert wait_until(lambda: os.path.exists(listener._wake_path(os.getpid())), timeout=5)
        poker.poke("api", os.getpid())
        assert wait_until(lambda: woken == ["api"], timeout=5)
    finally:
        listener.stop()
