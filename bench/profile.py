"""``python bench/profile.py``: where MyProxy spends its CPU under load, sampled with py-spy.

Starts the backends and one ``python wsgi.py``, loads it with wrk (c=50, the 100 B file
by default), samples it with ``py-spy record`` meanwhile, and prints the functions with
the most samples: *self* (the function itself was running) and *cumulative* (it was on
the stack), as shares of the samples in which the process was busy. Also prints the CPU
per request over the same window, read from /proc. Needs py-spy (``pip install -r
bench/requirements.txt``); ptrace must be allowed (root, or ``kernel.yama.ptrace_scope=0``).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):   # run as a script: import `bench` from the repository root,
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # not bench/

from bench import contenders, procfs, wrk  # noqa: E402
from bench.processes import Supervisor, raise_fd_limit  # noqa: E402

SETTLE = 1.0          # seconds of load before sampling starts

# Leaves where a thread waits rather than works, though py-spy counts it busy: gevent's
# threadpool (its DNS resolver's) worker threads block on a native lock between jobs.
WAITING_LEAVES = ("acquire_with_timeout (gevent/_threading.py",)


def summarise(lines) -> tuple[int, collections.Counter, collections.Counter]:
    """Total samples, and per-frame self and cumulative counts, from py-spy's raw
    (collapsed) output: one ``frame;frame;...;leaf COUNT`` line per distinct stack.
    Stacks that end waiting (``WAITING_LEAVES``) are left out."""
    total, own, cumulative = 0, collections.Counter(), collections.Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        count = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(WAITING_LEAVES):
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):          # a recursive frame counts once per sample
            cumulative[frame] += count
    return total, own, cumulative


def top_table(title: str, counter: collections.Counter, total: int, limit: int = 15) -> str:
    lines = [f"| {title} | samples | share |", "|---|---:|---:|"]
    for frame, count in counter.most_common(limit):
        lines.append(f"| `{frame}` | {count} | {count / total:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/profile.py", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sampling")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--path", default="/100b", choices=("/100b", "/64k", "/1m"))
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--lines", action="store_true",
                        help="count samples by line rather than by function")
    parser.add_argument("--save", metavar="FILE",
                        help="also keep py-spy's collapsed stacks (for flamegraph.pl or speedscope)")
    args = parser.parse_args(argv)
    py_spy = contenders.find_tool("py-spy", os.path.join(os.path.dirname(sys.executable), "py-spy"))
    wrk_path = contenders.find_tool("wrk", "/usr/bin/wrk")
    if not py_spy or not wrk_path:
        print("bench: needs py-spy (pip install -r bench/requirements.txt) and wrk", file=sys.stderr)
        return 2
    raise_fd_limit(4096)
    with tempfile.TemporaryDirectory(prefix="myproxy-profile-") as workdir, \
            Supervisor(workdir) as sup:
        os.chmod(workdir, 0o755)
        backends, _ = contenders.start_backends(
            sup, workdir, contenders.find_tool("nginx", "/usr/sbin/nginx"))
        proxy = contenders.start_myproxy(sup, workdir, backends)
        wrk.run(wrk_path, proxy.url + args.path, args.connections, 2.0)        # warm-up
        load = sup.start("wrk", wrk.command(wrk_path, proxy.url + args.path, args.connections,
                                            args.duration + 2 * SETTLE))
        time.sleep(SETTLE)
        cpu = procfs.cpu_seconds(proxy.process.pid)
        raw = os.path.join(workdir, "profile.txt")
        subprocess.run([py_spy, "record", "--pid", str(proxy.process.pid), "--format", "raw",
                        *([] if args.lines else ["--function"]), "--rate", str(args.rate), "--duration", f"{args.duration:g}",
                        "--output", raw], check=True, capture_output=True,
                       timeout=args.duration + 60)
        cpu = procfs.cpu_seconds(proxy.process.pid) - cpu
        load.popen.wait(timeout=args.duration + 60)
        with open(load.log_path) as handle:
            result = wrk.parse(handle.read())
        with open(raw) as handle:
            total, own, cumulative = summarise(handle)
        if args.save:
            shutil.copyfile(raw, args.save)
    # wrk ran a little longer than the sampling: scale its count to the sampled window.
    requests = result.rps * args.duration
    print(f"# MyProxy profile: {args.path} at c={args.connections}, {args.duration:g}s, "
          f"{total} busy samples\n")
    print(f"- load: {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms, {result.errors} errors")
    print(f"- CPU per request while sampled: {cpu / requests * 1e6:.0f} us "
          "(sampling itself adds a little)\n")
    print(top_table("self", own, total, args.top) + "\n")
    print(top_table("cumulative", cumulative, total, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
