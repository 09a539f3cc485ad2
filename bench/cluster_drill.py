"""Cluster drill (issue 29): ``python bench/cluster_drill.py [--seconds 10] [--outage 10]``.

Two MyProxy instances, one ``python wsgi.py`` and one the Procfile's gunicorn with 2
workers, sharing one ``redis-server`` (``cluster``), two built-in backends, every process
stopped by PID at the end. One client (this process) alternates its requests between the
two instances, on keep-alive connections.

- ``shared``: ``rate: 50/s, burst: 0, key: route``, flooded for ``--seconds``: admitted in
  total 50/s ± 5 % (two instances alone would let 100/s through).
- ``drain``: a drain of one backend sent to the ``wsgi.py`` instance under load; the
  gunicorn instance's requests to that backend (its ``/status`` counters, summed over its
  workers) from one second after the drain's answer to the end: expected 0.
- ``outage``: ``redis-server`` killed for ``--outage`` seconds mid-load, then started again
  on the same port: failed requests (anything but 200 and 429: expected 0), latency p99
  before, during and after, the admitted rate during the outage (each instance's own
  limit: at most 100/s for two), and each instance's outage and recovery lines.
- ``cost``: the ``wsgi.py`` instance's CPU per request, the client under its limit, with
  the limit kept locally and kept in Redis, rounds interleaved.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

if __package__ in (None, ""):   # run as a script: import `bench` and `app` from the root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench import configs, contenders, procfs  # noqa: E402
from bench.processes import Supervisor, free_port, wait_serving  # noqa: E402
from bench.ratelimit import start_proxy  # noqa: E402
from tests.rawclient import connect, get, read_response, request  # noqa: E402

SHARED = {"rate": "50/s", "burst": 0, "key": "route"}
UNDER = {"rate": "1000000/s", "burst": 0, "key": "client_ip"}   # the client never reaches it
MAX_SECONDS = 30.0


def start_redis(sup, workdir, port, name="redis"):
    folder = os.path.join(workdir, name)
    os.makedirs(folder, exist_ok=True)
    process = sup.start(name, [shutil.which("redis-server"), "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            gevent.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def alternate(ports, seconds, connections=4, timings=None, stop=None):
    """Requests back to back for ``seconds``, each client alternating between ``ports``
    on one keep-alive connection to each. Returns statuses counted ("error": no answer)
    and the seconds from the first answer on; ``timings`` gets (time, latency, status)."""
    counts: dict = {}
    first: list[float] = []
    deadline = time.monotonic() + seconds

    def client():
        socks = {}
        turn = 0
        while time.monotonic() < deadline and not (stop and stop[0]):
            port = ports[turn % len(ports)]
            turn += 1
            started = time.monotonic()
            try:
                sock = socks.get(port) or socks.setdefault(port, connect(port))
                sock.sendall(b"GET /100b HTTP/1.1\r\nHost: bench\r\n\r\n")
                status = read_response(sock)[0]
            except OSError:
                socks.pop(port, None)
                status = "error"
            if not first:
                first.append(time.monotonic())
            counts[status] = counts.get(status, 0) + 1
            if timings is not None:
                timings.append((started, time.monotonic() - started, status))
        for sock in socks.values():
            sock.close()

    gevent.joinall([gevent.spawn(client) for _ in range(connections)], raise_error=True)
    return counts, time.monotonic() - first[0]


def shared(ports, seconds):
    counts, elapsed = alternate(ports, seconds)
    rate = counts.get(200, 0) / elapsed
    print(f"\n## shared: rate 50/s for both instances, {elapsed:.1f} s alternating\n")
    print(f"admitted {counts.get(200, 0)} (200), refused {counts.get(429, 0)} (429), "
          f"other {sum(v for k, v in counts.items() if k not in (200, 429))}: "
          f"{rate:.1f}/s admitted in total (expected 50/s ± 5 %)")
    return abs(rate / 50 - 1) <= 0.05


def drain(ports, backends, seconds):
    """Drain ``backends[1]`` through ports[0]; count ports[1]'s requests to it after 1 s."""
    stop = [False]
    load = gevent.spawn(alternate, ports, seconds, 4, None, stop)
    gevent.sleep(seconds / 3)
    body = json.dumps({"backend": backends[1], "state": "drain"}).encode()
    status = request(ports[0], b"PATCH /_myproxy/api/backends HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(body) + body)[0]
    gevent.sleep(1.0)
    after_second = _requests(ports[1], backends[1])
    load.join()
    sent = _requests(ports[1], backends[1]) - after_second
    print(f"\n## drain: sent to one instance (answer {status}); the other's requests to the "
          f"drained backend from 1 s after the answer to the end: {sent}")
    body = json.dumps({"backend": backends[1], "state": "ready"}).encode()
    request(ports[0], b"PATCH /_myproxy/api/backends HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body)
    return status == 200 and sent == 0


def _requests(port, url):
    document = json.loads(get(port, "/_myproxy/status")[2])
    return next(b["requests"] for b in document["backends"] if b["url"] == url)


def outage(sup, workdir, ports, redis_port, proxies, seconds, down):
    timings: list = []
    stop = [False]
    load = gevent.spawn(alternate, ports, seconds + down + seconds, 4, timings, stop)
    gevent.sleep(seconds)
    redis = next(p for p in sup.processes if p.name.startswith("redis") and p.running())
    killed = time.monotonic()
    os.kill(redis.pid, 9)
    redis.popen.wait(timeout=10)
    gevent.sleep(down)
    start_redis(sup, workdir, redis_port, f"redis-again-{int(killed)}")
    back = time.monotonic()
    counts, _ = load.get()
    print(f"\n## outage: redis-server killed for {down:g} s mid-load, then started again\n")
    print("| phase | requests | failed | admitted/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for label, low, high in (("before", 0, killed), ("Redis down", killed, back),
                             ("after", back + 1.5, float("inf"))):
        rows = [t for t in timings if low <= t[0] < high]
        span = (min(high, rows[-1][0]) - max(low, rows[0][0])) if rows else 1
        latencies = sorted(t[1] for t in rows)
        failed = sum(1 for t in rows if t[2] not in (200, 429))
        admitted = sum(1 for t in rows if t[2] == 200) / span if span else 0
        p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0
        p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0
        print(f"| {label} | {len(rows)} | {failed} | {admitted:.0f} | {p50:.1f} | {p99:.1f} |")
    failed = sum(v for k, v in counts.items() if k not in (200, 429))
    print(f"\nfailed requests: {failed}")
    for process in proxies:
        with open(process.log_path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        lines = [line for line in text.splitlines() if "cluster: Redis" in line]
        print(f"{process.name}: outage lines {sum('failed (' in line for line in lines)}, "
              f"recovery lines {sum('answers again' in line for line in lines)}")
        for line in lines:
            print("    " + line[:200])
    return failed == 0


def cost(sup, workdir, backends, redis_url, requests, rounds=4):
    from bench.ratelimit import hammer
    print(f"\n## cost: python wsgi.py CPU per request, client under its limit, {requests:,} "
          f"requests a round, {rounds} rounds interleaved\n")
    started = {"local": start_proxy(sup, workdir, backends, "cost-local", UNDER),
               "redis": start_proxy(sup, workdir, backends, "cost-redis", UNDER,
                                    cluster={"redis": redis_url, "prefix": "cost"})}
    per = {"local": [], "redis": []}
    for round_ in range(rounds):
        order = list(started.items())
        for name, (process, port) in order[::-1] if round_ % 2 else order:
            before = procfs.cpu_seconds(process.pid)
            counts, _ = hammer(port, requests=requests, connections=10)
            assert counts.get(200) == requests, counts
            per[name].append((procfs.cpu_seconds(process.pid) - before) / requests)
    best = {name: sorted(values)[len(values) // 2] * 1e6 for name, values in per.items()}
    print("| limit kept | µs a request |\n|---|---|")
    print(f"| locally (no cluster) | {best['local']:.0f} |\n| in Redis (cluster) | "
          f"{best['redis']:.0f} |\n\ndifference: {best['redis'] - best['local']:+.0f} µs "
          f"({best['redis'] / best['local'] - 1:+.1%})")
    for process, _ in started.values():
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/cluster_drill.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=10_000, help="a cost round's requests")
    parser.add_argument("--rounds", type=int, default=4, help="cost rounds")
    parser.add_argument("--only", default="shared,drain,outage,cost")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("bench: redis-server is not installed (apt-get install redis-server)")
        return 2
    seconds, down = min(args.seconds, MAX_SECONDS), min(args.outage, MAX_SECONDS)
    only = set(args.only.split(","))
    good = True
    with tempfile.TemporaryDirectory(prefix="myproxy-cluster-") as workdir, \
            Supervisor(workdir) as sup:
        root = os.path.join(workdir, "www")
        contenders.write_files(root)
        ports = [free_port(), free_port()]
        backend = contenders.start_builtin_backend(sup, root, ports)
        for port in ports:
            wait_serving(backend, port, configs.HEALTH_PATH, contenders.START_TIMEOUT)
        backends = [f"http://127.0.0.1:{port}" for port in ports]
        redis_port = free_port()
        start_redis(sup, workdir, redis_port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        cluster = {"redis": redis_url, "prefix": "drill", "timeout": "50ms"}
        one = start_proxy(sup, workdir, backends, "wsgi", SHARED, 0, cluster=cluster)
        two = start_proxy(sup, workdir, backends, "gunicorn", SHARED, 2, cluster=cluster)
        instances = [one[1], two[1]]
        if "shared" in only:
            good &= shared(instances, seconds)
        if "drain" in only:
            good &= drain(instances, backends, seconds)
        if "outage" in only:
            good &= outage(sup, workdir, instances, redis_port, [one[0], two[0]],
                           seconds / 2, down)
        if "cost" in only:
            cost(sup, workdir, backends, redis_url, min(args.requests, 50_000),
                 min(args.rounds, 10))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
