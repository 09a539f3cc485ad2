"""Overload drill (issue 25): a backend that serves a few requests at a time, behind
``max_conns`` and the queue, under far more clients than it can take.

    python bench/queue_drill.py [--server wsgi|gunicorn] [--workers 3] [--clients 200]
                                [--seconds 20] [--max-conns 4] [--queue-size 100]
                                [--queue-timeout 10s] [--service 0.05]

A drill, not a timed test. Everything runs on 127.0.0.1 and is bounded (``--seconds`` at
most 60, ``--clients`` at most 500). It starts one backend process (each request sleeps
``--service`` seconds; the backend counts how many it holds at once, itself) and the proxy
(``python wsgi.py``, or the Procfile's ``gunicorn wsgi:application`` with
``WEB_CONCURRENCY=--workers``), then ``--clients`` closed-loop clients, each sending one GET
after another on a connection of its own for ``--seconds`` (after a 503 it waits what
``Retry-After`` says, as a well-behaved client does).

It prints: the most the backend held at once (must not pass ``--max-conns``), the answers
(200s, the queue's 503s by reason, anything else: must be none), latency percentiles of the
admitted requests, and the bound they should stay within: the backend's own time × the
position a request can queue at (``ceil(min(clients, size + cap) / cap)`` rounds of
``--service``). Exit code 1 when the cap was passed or a request failed otherwise.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.drill import ROOT, free_port, percentile, wait_port  # noqa: E402

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
CLIENT_TIMEOUT = 60.0


def serve_backend(port: int, service: float) -> None:
    """The backend: each request sleeps ``service`` s; ``/_count`` says the most held."""
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class Handler(WSGIHandler):
        def handle(self):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # STACK-FACTS 13
            super().handle()

        def log_request(self):
            pass

    state = {"now": 0, "most": 0, "served": 0}

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/_count":
            body = f"{state['most']} {state['served']}".encode()
        else:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            try:
                gevent.sleep(service)
            finally:
                state["now"] -= 1
                state["served"] += 1
            body = b"ok"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    WSGIServer(("127.0.0.1", port), app, handler_class=Handler, log=None,
               error_log=None).serve_forever()


def client(port: int, until: float, results: list) -> None:
    connection = None
    while time.monotonic() < until:
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
        started = time.monotonic()
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            body = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as error:
            results.append(("error", time.monotonic() - started, type(error).__name__))
            connection.close()
            connection = None
            continue
        reason = ""
        if status == 503:
            reason = "full" if b"queue is full" in body else \
                "timeout" if b"queue.timeout" in body else body.decode(errors="replace")[:60]
        results.append((status, time.monotonic() - started, reason))
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
            connection = None
        if status == 503:        # as a well-behaved client does: no retry storm
            gevent.sleep(min(float(response.getheader("Retry-After") or 1), until - time.monotonic(), 5))


def sample_depth(port: int, until: float, deepest: list) -> None:
    """The deepest queue ``/_myproxy/status`` shows (the group's under gunicorn)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while time.monotonic() < until:
        try:
            connection.request("GET", "/_myproxy/status")
            document = json.loads(connection.getresponse().read())
            deepest[0] = max(deepest[0], max(r["queue"]["depth"] for r in document["routes"]))
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        gevent.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("wsgi", "gunicorn"), default="wsgi")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-conns", type=int, default=4)
    parser.add_argument("--queue-size", type=int, default=100)
    parser.add_argument("--queue-timeout", default="10s")
    parser.add_argument("--service", type=float, default=0.05)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        serve_backend(args.backend, args.service)
        return 0
    seconds, clients = min(args.seconds, 60), min(args.clients, 500)

    backend_port, proxy_port = free_port(), free_port()
    folder = tempfile.mkdtemp(prefix="myproxy-queue-drill-")
    config = os.path.join(folder, "config.yaml")
    with open(config, "w") as file:
        yaml.safe_dump({
            "host": "127.0.0.1", "port": proxy_port, "access_log": False,
            "backends": [{"url": f"http://127.0.0.1:{backend_port}", "max_conns": args.max_conns}],
            "queue": {"size": args.queue_size, "timeout": args.queue_timeout},
            "health_check": {"enabled": False},
            "limits": {"max_connections": 2 * clients + 100},
        }, file)
    backend = subprocess.Popen([sys.executable, __file__, "--backend", str(backend_port),
                                "--service", str(args.service)], cwd=ROOT)
    if args.server == "wsgi":
        command, env = [sys.executable, "wsgi.py", "--config", config], {}
    else:
        command = [GUNICORN, "wsgi:application"]
        env = {"MYPROXY_CONFIG": config, "PORT": str(proxy_port),
               "WEB_CONCURRENCY": str(args.workers)}
    env = {**os.environ, **env}
    if args.server == "gunicorn":
        env.pop("HOST", None)
    log = open(os.path.join(folder, "proxy.log"), "w")
    proxy = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(backend_port, timeout=20)
        wait_port(proxy_port, timeout=20)
        if args.server == "gunicorn":
            time.sleep(2)            # every worker booted and ready
        results: list = []
        until = time.monotonic() + seconds
        deepest = [0]
        greenlets = [gevent.spawn(client, proxy_port, until, results) for _ in range(clients)]
        greenlets.append(gevent.spawn(sample_depth, proxy_port, until, deepest))
        gevent.joinall(greenlets, timeout=seconds + CLIENT_TIMEOUT + 5)
        counter = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=5)
        counter.request("GET", "/_count")
        most, served = map(int, counter.getresponse().read().split())
    finally:
        proxy.terminate()
        backend.terminate()
        proxy.wait(timeout=30)
        backend.wait(timeout=5)
        log.close()

    admitted = [seconds_ for status, seconds_, _ in results if status == 200]
    rejected: dict[str, int] = {}
    for status, _, reason in results:
        if status == 503:
            rejected[reason] = rejected.get(reason, 0) + 1
    others = [(status, reason) for status, _, reason in results if status not in (200, 503)]
    rounds = math.ceil(min(clients, args.queue_size + args.max_conns) / args.max_conns)
    bound = args.service * rounds
    server = "python wsgi.py" if args.server == "wsgi" else \
        f"gunicorn wsgi:application, {args.workers} workers"
    print(f"{server}: {clients} clients for {seconds:g}s, max_conns {args.max_conns}, "
          f"queue {args.queue_size}/{args.queue_timeout}, backend time {args.service * 1000:g}ms")
    print(f"  the backend held at most {most} at once (cap {args.max_conns}); it served {served}")
    print(f"  answers: {len(admitted)} x 200, "
          + "".join(f"{count} x 503 ({reason}), " for reason, count in sorted(rejected.items()))
          + f"{len(others)} other" + (f" {others[:5]}" if others else ""))
    print(f"  deepest queue seen on /status: {deepest[0]} (size {args.queue_size})")
    print(f"  admitted latency ms: p50 {percentile(admitted, 0.5) * 1000:.0f}, "
          f"p99 {percentile(admitted, 0.99) * 1000:.0f}, max {max(admitted, default=0) * 1000:.0f}; "
          f"bound: backend time x queue position = {bound * 1000:.0f}ms")
    print(f"  throughput: {len(admitted) / seconds:.0f} admitted/s "
          f"(the backend can do {args.max_conns / args.service:.0f}/s)")
    print(f"  proxy log: {log.name}")
    return 0 if most <= args.max_conns and not others else 1


if __name__ == "__main__":
    sys.exit(main())
