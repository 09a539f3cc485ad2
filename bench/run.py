"""``python bench/run.py [--quick]``: MyProxy against nginx, HAProxy and Caddy, on this machine.

Starts three backends (nginx serving static files of 100 B, 64 KiB and 1 MiB; the
built-in backend where nginx is not installed), MyProxy under ``python wsgi.py`` (also with
a table of 100 routes the requests fall through, to price the route lookup) and under
gunicorn, and, when installed, nginx, HAProxy and Caddy as round-robin balancers over the
same backends. Then, round after round, drives each with wrk (keep-alive): every path at c=50,
and the 100 B path at c=1, 10, 100 and 500, the contenders interleaved in a rotating order
so that drift on a shared machine touches them all alike. Writes a JSON file and a
Markdown report to ``bench/results/`` and prints the report. Every process it starts is
stopped by PID at the end, also on an error or Ctrl-C; every run is bounded in time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

if __package__ in (None, ""):   # run as a script: import `bench` from the repository root,
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # not bench/

from bench import contenders, procfs, report, wrk  # noqa: E402
from bench.processes import Supervisor, raise_fd_limit  # noqa: E402

RESULTS = os.path.join(contenders.ROOT, "bench", "results")
CELLS = (("/100b", 50), ("/64k", 50), ("/1m", 50),
         ("/100b", 1), ("/100b", 10), ("/100b", 100), ("/100b", 500))
# The HTTPS contenders (myproxy-https, nginx-https: the same certificate, EC P-256): 100 B
# over keep-alive, and with a new connection, so a new full TLS handshake, per request.
HANDSHAKES = "/100b new-conn"         # how the second cell is named in the results
TLS_CELLS = (("/100b", 50), (HANDSHAKES, 50))
CLOSE = ("Connection: close",)
TLS_CONTENDERS = ("myproxy-https", "nginx-https")
FD_LIMIT = 20000


@dataclass(frozen=True)
class Mode:
    rounds: int
    duration: float       # seconds per wrk run
    warmup: float         # seconds of load per contender before measuring


MODES = {"full": Mode(rounds=3, duration=8.0, warmup=2.0),
         "quick": Mode(rounds=1, duration=3.0, warmup=1.0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round: about two minutes")
    parser.add_argument("--rounds", type=int, help="rounds (default: 3, or 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default: 8, or 3)")
    parser.add_argument("--only", help="comma-separated contenders to run "
                        "(direct,nginx,haproxy,caddy,myproxy,myproxy-routes,myproxy-gunicorn,"
                        "myproxy-gunicorn-gevent,myproxy-https,nginx-https; myproxy-capped, "
                        "max_conns set and never reached, runs only when named here)")
    parser.add_argument("--cells", help="comma-separated PATH:CONNECTIONS cells to run "
                        "(default: all; e.g. /100b:50 to compare two contenders closely)")
    parser.add_argument("--baseline", metavar="REF[,REF...]",
                        help="also run python wsgi.py from each git REF (contender myproxy@REF), "
                        "interleaved with the rest: a change against what it changes")
    parser.add_argument("--output", default=RESULTS, help="directory for the JSON and Markdown")
    args = parser.parse_args(argv)
    base = MODES["quick" if args.quick else "full"]
    mode = Mode(args.rounds or base.rounds, args.duration or base.duration, base.warmup)
    cells = CELLS
    if args.cells:
        cells = tuple((path, int(connections)) for path, _, connections
                      in (cell.rpartition(":") for cell in args.cells.split(",")))

    tools = {"wrk": contenders.find_tool("wrk", "/usr/bin/wrk"),
             "nginx": contenders.find_tool("nginx", "/usr/sbin/nginx"),
             "haproxy": contenders.find_tool("haproxy", "/usr/sbin/haproxy"),
             "caddy": contenders.find_tool("caddy", "/usr/bin/caddy")}
    if not tools["wrk"]:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    raise_fd_limit(FD_LIMIT)
    only = set(args.only.split(",")) if args.only else None
    meta = describe_run(tools, mode, argv if argv is not None else sys.argv[1:])
    records: list[dict] = []
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="myproxy-bench-") as workdir:
            os.chmod(workdir, 0o755)               # nginx's workers run unprivileged
            with Supervisor(workdir) as sup:
                field = start_field(sup, workdir, tools, only, args.baseline)
                meta["contenders"] = {c.name: c.description for c in field}
                tls_cells = TLS_CELLS if cells == CELLS else ()
                print(f"bench: {len(field)} contenders, {mode.rounds} round(s) of {len(cells)} "
                      f"cells ({len(tls_cells)} over HTTPS), {mode.duration:g}s each: about "
                      f"{estimate(mode, len(field), len(cells) + len(tls_cells)) / 60:.0f} min",
                      flush=True)
                for contender in field:
                    wrk.run(tools["wrk"], contender.url + "/100b", 50, mode.warmup)
                measure_all(field, tools["wrk"], mode, records, cells)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["run"]["load average after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if records:
        write_results(args.output, meta, records, interrupted)
    return 130 if interrupted else 0


def start_field(sup: Supervisor, workdir: str, tools: dict, only: set | None,
                baseline: str | None = None) -> list:
    """Start the backends and every contender; ``direct`` (the ceiling) first."""
    backends, direct = contenders.start_backends(sup, workdir, tools["nginx"])
    field = [direct]
    wanted = (lambda name: only is None or name in only)
    if tools["nginx"] and wanted("nginx"):
        field.append(contenders.start_nginx(sup, workdir, tools["nginx"], backends))
    if tools["haproxy"] and wanted("haproxy"):
        field.append(contenders.start_haproxy(sup, workdir, tools["haproxy"], backends))
    if tools["caddy"] and wanted("caddy"):
        field.append(contenders.start_caddy(sup, workdir, tools["caddy"], backends))
    if wanted("myproxy"):
        field.append(contenders.start_myproxy(sup, workdir, backends))
    for ref in (baseline.split(",") if baseline else ()):
        field.append(contenders.start_baseline(sup, workdir, backends, ref))
    if only is not None and "myproxy-capped" in only:   # asked for by name only
        field.append(contenders.start_myproxy_capped(sup, workdir, backends))
    if wanted("myproxy-routes"):
        field.append(contenders.start_myproxy_routes(sup, workdir, backends))
    for name in contenders.GUNICORN_WAYS:
        if wanted(name):
            field.append(contenders.start_gunicorn(sup, workdir, backends, name))
    if wanted("myproxy-https") or (tools["nginx"] and wanted("nginx-https")):
        cert, key = contenders.make_certificate(workdir)
        if wanted("myproxy-https"):
            field.append(contenders.start_myproxy(
                sup, workdir, backends, name="myproxy-https",
                tls={"certificates": [{"cert": cert, "key": key}]}))
        if tools["nginx"] and wanted("nginx-https"):
            field.append(contenders.start_nginx(sup, workdir, tools["nginx"], backends,
                                                tls=(cert, key)))
    return [c for c in field if wanted(c.name) or c.name.startswith("myproxy@")]


def measure_all(field: list, wrk_path: str, mode: Mode, records: list[dict],
                cells=CELLS) -> None:
    """Every round, every cell, every contender in an order rotated per round and cell:
    the plain-HTTP contenders on ``cells``, the HTTPS ones on ``TLS_CELLS`` (when all the
    plain cells run)."""
    plain = [c for c in field if c.name not in TLS_CONTENDERS]
    secure = [c for c in field if c.name in TLS_CONTENDERS]
    tls_cells = TLS_CELLS if cells == CELLS else ()
    plan = [(cell, plain) for cell in cells] + [(cell, secure) for cell in tls_cells]
    for round_number in range(1, mode.rounds + 1):
        for index, ((path, connections), group) in enumerate(plan):
            if not group:
                continue
            shift = (round_number + index) % len(group)
            for contender in group[shift:] + group[:shift]:
                record = measure(contender, wrk_path, path, connections, mode.duration)
                record["round"] = round_number
                records.append(record)
                print(f"  round {round_number} {path:>5} c={connections:<3} {contender.name:<16} "
                      f"{record['rps']:>9,.0f} req/s  p99 {record['p99_ms']:>8.2f} ms  "
                      f"{record['cpu_us_per_request']:>6.0f} us/req  errors {record['errors']}  "
                      f"others {record['others_cpu_share']:.0%}",
                      flush=True)


def measure(contender, wrk_path: str, path: str, connections: int, duration: float) -> dict:
    """One wrk run, with the contender's CPU time read before and after, and how busy the
    rest of the machine (what this benchmark did not start) was meanwhile."""
    pid = contender.process.pid
    started, machine_busy, ours = time.monotonic(), procfs.machine_busy_seconds(), \
        procfs.cpu_seconds(os.getpid())
    before = procfs.cpu_seconds(pid)
    new_connections = path == HANDSHAKES
    result = wrk.run(wrk_path, contender.url + path.split(" ")[0], connections, duration,
                     headers=CLOSE if new_connections else ())
    cpu = procfs.cpu_seconds(pid) - before
    others = (procfs.machine_busy_seconds() - machine_busy) - (procfs.cpu_seconds(os.getpid()) - ours)
    others_share = max(0.0, others) / ((time.monotonic() - started) * (os.cpu_count() or 1))
    if not contender.process.running():
        raise RuntimeError(f"{contender.name} exited during the run:\n"
                           f"{contender.process.log_tail()}")
    return {
        "contender": contender.name, "path": path, "connections": connections,
        "requests": result.requests, "seconds": result.seconds, "rps": result.rps,
        "p50_ms": result.p50_ms, "p75_ms": result.p75_ms, "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms, "socket_errors": result.socket_errors,
        "bad_status": result.bad_status, "errors": result.errors, "cpu_seconds": cpu,
        "cpu_us_per_request": cpu / result.requests * 1e6 if result.requests else None,
        "peak_rss_bytes": procfs.memory(pid)["VmHWM"],
        "others_cpu_share": others_share,
    }


def estimate(mode: Mode, contenders_count: int, cells: int = len(CELLS)) -> float:
    return contenders_count * (mode.warmup + mode.rounds * cells * (mode.duration + 0.3))


def describe_run(tools: dict, mode: Mode, argv: list[str]) -> dict:
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python bench/run.py " + " ".join(argv),
        "machine": machine(),
        "software": software(tools),
        "run": {"rounds": mode.rounds, "seconds per run": mode.duration,
                "wrk": "1 thread, keep-alive, --latency, --timeout 5s",
                "commit": git_commit(),
                "load average before": " ".join(f"{x:.2f}" for x in os.getloadavg())},
    }


def machine() -> dict:
    model = "?"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        mem_kib = int(handle.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": model, "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
            "kernel": platform.release()}


def software(tools: dict) -> dict:
    import gevent
    import gunicorn
    found = {"python": platform.python_version(), "gevent": gevent.__version__,
             "gunicorn": gunicorn.__version__}
    flags = {"wrk": "-v", "nginx": "-v", "haproxy": "-v", "caddy": "version"}
    for name, path in tools.items():
        if path:
            found[name] = contenders.tool_version(path, flags[name])
    return found


def git_commit() -> str:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=contenders.ROOT,
                              capture_output=True, text=True, timeout=10)
        return done.stdout.strip() or "?"
    except OSError:
        return "?"


def write_results(directory: str, meta: dict, records: list[dict], partial: bool) -> None:
    os.makedirs(directory, exist_ok=True)
    rows = report.summarise(records)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"bench-{stamp}{'-partial' if partial else ''}"
    with open(os.path.join(directory, name + ".json"), "w") as handle:
        json.dump({"meta": meta, "rows": rows, "records": records}, handle, indent=1)
    text = report.render(meta, rows, records)
    with open(os.path.join(directory, name + ".md"), "w") as handle:
        handle.write(text)
    print("\n" + text)
    print(f"bench: wrote {os.path.join(directory, name)}.json and .md")


if __name__ == "__main__":
    sys.exit(main())
