"""``python bench/memory.py``: MyProxy's memory over large bodies and many idle connections.

Two checks, each on a fresh ``python wsgi.py`` process in front of the built-in backend:

1. *Large bodies*: a 1 GiB upload and a 1 GiB download through the proxy, each verified
   byte count for byte count; RSS growth is the peak RSS (VmHWM) afterwards less the RSS
   before, after a warm-up (target: under 50 MiB).
2. *Idle connections*: 10,000 client connections each make one keep-alive request and
   then stay open and idle; the proxy's RSS is read (target: under 300 MiB), then wrk
   loads other connections and their p99 latency is read (target: under 50 ms, no
   errors), beside the same load before the idle connections were opened; last, a sample
   of the idle connections is checked to still be served. The load is c=10 by default,
   under the proxy's saturation, so that the figure shows what the idle connections
   cost rather than how many requests a second one process serves (``run.py`` shows that).

The open-file limit is raised with ``setrlimit`` (the proxy inherits it). Every process
started is stopped by PID at the end; every socket operation has a timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time

if __package__ in (None, ""):   # run as a script: import `bench` from the repository root,
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # not bench/

from bench import contenders, procfs, wrk  # noqa: E402
from bench.processes import Supervisor, free_port, raise_fd_limit, wait_serving  # noqa: E402
from bench.run import RESULTS, machine  # noqa: E402

MIB = 1024 * 1024
PIECE = MIB
SOCKET_TIMEOUT = 60.0
BATCH = 200                 # idle connections opened before their responses are read
SAMPLE = 100                # idle connections asked again at the end
TARGETS = {"growth_mib": 50, "idle_rss_mib": 300, "idle_p99_ms": 50}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="upload and download size")
    parser.add_argument("--idle", type=int, default=10000, help="idle client connections")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk load")
    parser.add_argument("--connections", type=int, default=10, help="wrk's concurrency")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    wrk_path = contenders.find_tool("wrk", "/usr/bin/wrk")
    limit = raise_fd_limit(args.idle + 1000)
    if limit < args.idle + 500:
        print(f"bench: open-file limit {limit} is too low for {args.idle} connections",
              file=sys.stderr)
        return 2
    result = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
              "size_mib": args.size_mib, "idle_connections": args.idle}
    with tempfile.TemporaryDirectory(prefix="myproxy-memory-") as workdir, \
            Supervisor(workdir) as sup:
        root = os.path.join(workdir, "www")
        contenders.write_files(root)
        ports = [free_port() for _ in range(3)]
        backend = contenders.start_builtin_backend(sup, root, ports)
        for port in ports:
            wait_serving(backend, port, "/100b")
        backends = [f"http://127.0.0.1:{port}" for port in ports]

        proxy = contenders.start_myproxy(sup, workdir, backends, name="myproxy-bodies")
        result["bodies"] = check_bodies(proxy, args.size_mib * MIB)
        proxy.process.stop()

        proxy = contenders.start_myproxy(sup, workdir, backends, name="myproxy-idle",
                                         **idle_overrides(args.idle))
        result["idle"] = check_idle(proxy, args.idle, wrk_path, args.connections, args.duration)
    text = render(result)
    os.makedirs(args.output, exist_ok=True)
    name = os.path.join(args.output, "memory-" + time.strftime("%Y%m%d-%H%M%S"))
    with open(name + ".json", "w") as handle:
        json.dump(result, handle, indent=1)
    with open(name + ".md", "w") as handle:
        handle.write(text)
    print(text)
    print(f"bench: wrote {name}.json and .md")
    return 0


def idle_overrides(count: int) -> dict:
    """Config for the idle check: room for wrk's connections beside ``count`` idle ones
    (``limits.max_connections`` is 10,000 by default), and no idle timeout during it."""
    return {"limits": {"max_connections": count + 200}, "timeouts": {"client_idle": "1h"}}


def check_bodies(proxy, size: int) -> dict:
    """Upload then download ``size`` bytes through the proxy; RSS and CPU around them."""
    port = int(proxy.url.rsplit(":", 1)[1])
    pid = proxy.process.pid
    with connect(port) as sock:                 # warm-up: every code path once, small
        for _ in range(50):
            exchange(sock, "GET", "/100b")
        exchange(sock, "POST", "/upload", upload=4 * MIB)
        exchange(sock, "GET", f"/download?bytes={4 * MIB}")
    before = procfs.memory(pid)["VmRSS"]
    cpu = procfs.cpu_seconds(pid)
    timings = {}
    with connect(port) as sock:
        started = time.monotonic()
        status, length, body = exchange(sock, "POST", "/upload", upload=size)
        timings["upload_s"] = time.monotonic() - started
        _expect(status == 200 and body == str(size).encode(), f"upload: {status} {body!r}", proxy)
        started = time.monotonic()
        status, length, _ = exchange(sock, "GET", f"/download?bytes={size}")
        timings["download_s"] = time.monotonic() - started
        _expect(status == 200 and length == size, f"download: {status}, {length} bytes", proxy)
    memory = procfs.memory(pid)
    growth = memory["VmHWM"] - before
    return {"rss_before_mib": before / MIB, "peak_rss_mib": memory["VmHWM"] / MIB,
            "rss_after_mib": memory["VmRSS"] / MIB, "growth_mib": growth / MIB,
            "cpu_seconds": procfs.cpu_seconds(pid) - cpu,
            **timings, "met": growth / MIB < TARGETS["growth_mib"]}


def check_idle(proxy, count: int, wrk_path: str | None, connections: int,
               duration: float) -> dict:
    """Hold ``count`` idle keep-alive connections; RSS, then latency on other connections."""
    port = int(proxy.url.rsplit(":", 1)[1])
    pid = proxy.process.pid
    baseline = wrk.run(wrk_path, proxy.url + "/100b", connections, duration) if wrk_path else None
    rss_empty = procfs.memory(pid)["VmRSS"]
    idle: list[socket.socket] = []
    started = time.monotonic()
    try:
        while len(idle) < count:
            batch = [connect(port) for _ in range(min(BATCH, count - len(idle)))]
            for sock in batch:
                sock.sendall(b"GET /100b HTTP/1.1\r\nHost: bench\r\n\r\n")
            for sock in batch:
                status, _, _ = read_response(sock)
                _expect(status == 200, f"idle connection's request: {status}", proxy)
            idle.extend(batch)
        opened_s = time.monotonic() - started
        memory = procfs.memory(pid)
        load = None
        if wrk_path:
            load = wrk.run(wrk_path, proxy.url + "/100b", connections, duration)
        sample = idle[:: max(1, len(idle) // SAMPLE)]
        served = 0
        for sock in sample:
            try:
                served += exchange(sock, "GET", "/100b")[0] == 200
            except OSError:
                pass
        peak = procfs.memory(pid)["VmHWM"]
    finally:
        for sock in idle:
            sock.close()
    rss = memory["VmRSS"]
    result = {"rss_without_connections_mib": rss_empty / MIB, "rss_mib": rss / MIB,
              "per_connection_kib": (rss - rss_empty) / count / 1024,
              "peak_rss_mib": peak / MIB, "open_seconds": opened_s,
              "sample_still_served": f"{served}/{len(sample)}"}
    if load is not None:
        result.update({"connections": connections, "rps": load.rps, "p50_ms": load.p50_ms,
                       "p99_ms": load.p99_ms, "errors": load.errors,
                       "baseline_rps": baseline.rps, "baseline_p99_ms": baseline.p99_ms,
                       "baseline_errors": baseline.errors})
    result["met"] = (rss / MIB < TARGETS["idle_rss_mib"] and load is not None
                     and load.p99_ms < TARGETS["idle_p99_ms"] and load.errors == 0
                     and served == len(sample))
    return result


def _expect(condition: bool, what: str, proxy) -> None:
    if not condition:
        raise RuntimeError(f"unexpected answer through the proxy: {what}; its log ends:\n"
                           f"{proxy.process.log_tail()}")


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, method: str, path: str, upload: int = 0):
    """Send one request (``upload`` zero bytes as its body) and read the response."""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    if method == "POST":
        head += f"Content-Length: {upload}\r\nContent-Type: application/octet-stream\r\n"
    sock.sendall((head + "\r\n").encode())
    piece = memoryview(bytes(PIECE))
    while upload > 0:
        sock.sendall(piece[:min(upload, PIECE)])
        upload -= min(upload, PIECE)
    return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, int, bytes]:
    """Status, body length, and the first 64 bytes of the body (Content-Length framing)."""
    with sock.makefile("rb", buffering=PIECE) as reader:
        status_line = reader.readline()
        if not status_line:
            raise ConnectionError("closed before a response")
        length = 0
        while True:
            line = reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        buffer = bytearray(PIECE)
        view = memoryview(buffer)
        remaining, first = length, b""
        while remaining:
            got = reader.readinto(view[:min(remaining, PIECE)])
            if not got:
                raise ConnectionError(f"closed with {remaining} bytes of the body missing")
            if not first:
                first = bytes(view[:min(got, 64)])
            remaining -= got
    return int(status_line.split()[1]), length, first


def render(result: dict) -> str:
    bodies, idle = result["bodies"], result["idle"]
    size = f"{result['size_mib'] / 1024:g} GiB" if result["size_mib"] >= 1024 else f"{result['size_mib']} MiB"
    lines = [
        f"# MyProxy memory check, {result['started']}",
        "",
        f"- machine: {'; '.join(f'{k}: {v}' for k, v in result['machine'].items())}",
        "",
        "| check | target | measured | |",
        "|---|---|---|---|",
        f"| RSS growth over a {size} upload and a {size} download | < 50 MiB | "
        f"{bodies['growth_mib']:.1f} MiB (RSS {bodies['rss_before_mib']:.1f} -> peak "
        f"{bodies['peak_rss_mib']:.1f} MiB; upload {bodies['upload_s']:.1f} s, download "
        f"{bodies['download_s']:.1f} s, {bodies['cpu_seconds']:.1f} s CPU) | "
        f"{'met' if bodies['met'] else 'NOT met'} |",
        f"| RSS with {result['idle_connections']:,} idle keep-alive connections | < 300 MiB | "
        f"{idle['rss_mib']:.1f} MiB ({idle['per_connection_kib']:.1f} KiB per connection) | "
        f"{'met' if idle['rss_mib'] < TARGETS['idle_rss_mib'] else 'NOT met'} |",
    ]
    if "p99_ms" in idle:
        ok = idle["p99_ms"] < TARGETS["idle_p99_ms"] and idle["errors"] == 0
        lines.append(f"| p99 on other connections meanwhile (wrk c={idle['connections']}) | "
                     f"< 50 ms, 0 errors | {idle['p99_ms']:.1f} ms, {idle['errors']} errors, "
                     f"{idle['rps']:,.0f} req/s (before the idle connections: "
                     f"{idle['baseline_p99_ms']:.1f} ms, {idle['baseline_rps']:,.0f} req/s) | "
                     f"{'met' if ok else 'NOT met'} |")
    lines.append(f"| idle connections still served afterwards (sample) | all | "
                 f"{idle['sample_still_served']} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
