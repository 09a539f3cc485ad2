"""SIGHUP under ``python wsgi.py``: the config file re-read while requests keep flowing."""
import http.client
import signal
import time

import gevent
from gevent.event import Event

from tests.backends import wait_until
from tests.conftest import base_config
from tests.rawclient import get


class Stream:
    """Clients sending requests back to back on keep-alive connections, each result recorded."""

    def __init__(self, port: int, clients: int = 4, limit: int = 20000):
        self.port = port
        self.records: list[tuple[float, object]] = []    # (sent at, body or the error)
        self.stopped = Event()
        self.limit = limit
        self.greenlets = [gevent.spawn(self._run) for _ in range(clients)]

    def _run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stopped.is_set() and len(self.records) < self.limit:
            sent = time.monotonic()
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                body = response.read().decode()
                result = body if response.status == 200 else f"status {response.status}: {body}"
            except Exception as error:  # noqa: BLE001 - every failure is a result
                result = error
                connection.close()
            self.records.append((sent, result))

    def sent_after(self, moment: float, before: float = float("inf")) -> list:
        return [result for sent, result in self.records if moment < sent < before]

    def stop(self):
        self.stopped.set()
        gevent.joinall(self.greenlets, timeout=15)


def reloads(proxy) -> int:
    return proxy.output.count("config reloaded")


def test_reload_under_load_follows_each_new_list_and_fails_nothing(start_proxy, write_config,
                                                                   backends):
    a, b, c = backends
    proxy = start_proxy(base_config([a.url, b.url]))
    steps = [
        ("add", [a.url, b.url, c.url]),
        ("remove", [a.url, c.url]),
        ("re-weight", [{"url": a.url, "weight": 3}, c.url]),
    ]
    stream = Stream(proxy.port)
    windows = []
    try:
        assert wait_until(lambda: len(stream.records) >= 50, timeout=10)
        for count, (_, urls) in enumerate(steps, start=1):
            write_config(base_config(urls))
            hup_sent = time.monotonic()
            proxy.signal(signal.SIGHUP)
            assert wait_until(lambda: reloads(proxy) >= count, timeout=10), proxy.output
            reloaded = time.monotonic()
            assert wait_until(lambda: len(stream.sent_after(reloaded)) >= 60, timeout=10)
            windows.append((hup_sent, reloaded))
    finally:
        stream.stop()

    failures = [result for _, result in stream.records if not isinstance(result, str)
                or not result.startswith("backend ")]
    assert failures == [] and len(stream.records) >= 230
    ends = [hup for hup, _ in windows[1:]] + [float("inf")]
    added, removed, reweighted = [stream.sent_after(reloaded, end)
                                  for (_, reloaded), end in zip(windows, ends)]
    assert set(added) == {"backend a", "backend b", "backend c"}
    assert set(removed) == {"backend a", "backend c"}
    assert set(reweighted) == {"backend a", "backend c"}
    # Smooth weighted round-robin 3:1 gives a a c a: a quarter of the picks, give or take
    # the few requests that were on their way when the reload came.
    assert abs(reweighted.count("backend c") - len(reweighted) / 4) <= 3
    assert "+backend " + c.url in proxy.output and "-backend " + b.url in proxy.output
    assert f"{a.url} weight 1->3" in proxy.output


def test_in_flight_requests_to_a_removed_backend_finish(start_proxy, write_config, backends):
    a, b, _ = backends
    proxy = start_proxy(base_config([a.url, b.url]))
    waiting = [gevent.spawn(get, proxy.port, "/wait") for _ in range(2)]
    assert wait_until(lambda: any(r.target == "/wait" for r in a.requests)
                      and any(r.target == "/wait" for r in b.requests), timeout=5)
    write_config(base_config([a.url]))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for(f"config reloaded: -backend {b.url}")
    assert [get(proxy.port)[2] for _ in range(3)] == [b"backend a"] * 3
    b.release.set()
    a.release.set()
    gevent.joinall(waiting, timeout=10)
    assert sorted(job.value[2] for job in waiting) == [b"waited a", b"waited b"]
    assert all(job.value[0] == 200 for job in waiting)


def test_a_bad_file_on_reload_is_refused_and_the_old_config_keeps_serving(start_proxy, write_config,
                                                                          backends):
    a, b, _ = backends
    proxy = start_proxy(base_config([a.url]))
    path = write_config(f"host: 127.0.0.1\nport: 0\nbackends:\n  - {b.url}\n  - url: {b.url}/x\n"
                        f"    wieght: 2\n")
    proxy.signal(signal.SIGHUP)
    line = proxy.wait_for(r"config reload refused.*").group(0)
    assert f"{path}:6:5: backends[1].wieght: unknown key (did you mean `weight`?)" in line
    assert [get(proxy.port)[2] for _ in range(2)] == [b"backend a"] * 2
    write_config(base_config([b.url]))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("config reloaded")
    assert get(proxy.port)[2] == b"backend b"


def test_reloaded_request_limits_apply_to_the_next_connection(start_proxy, write_config, backend):
    proxy = start_proxy(base_config([backend.url]))
    big = "X-Big: " + "x" * 2000 + "\r\n"
    assert get(proxy.port, headers=big)[0] == 200
    write_config(base_config([backend.url], limits={"max_header_bytes": "1KiB"}))
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("config reloaded: limits.max_header_bytes 64KiB->1KiB")
    assert get(proxy.port, headers=big)[0] == 431
