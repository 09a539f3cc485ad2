"""Admin drill: drain, maint and ready on one backend under load, through the admin API, with
the Procfile's gunicorn and three workers (SPEC §9, issue 28's measurement).

    python bench/admin_drill.py [--seconds 12] [--keepalive 6] [--oneshot 3] [--slow-start 2s]

Everything runs on 127.0.0.1 and is bounded: the run lasts ``--seconds`` (at most 60) with
at most 50 clients, each sending one GET after another (closed loop). ``--keepalive``
clients keep their connection; ``--oneshot`` clients open one per request and close it.
Each GET asks its backend to take 0 to 200 ms, so requests are in flight when the state
changes. Three backend processes answer with their name; the proxy is ``gunicorn
wsgi:application`` with ``WEB_CONCURRENCY=3``. At 25% of the run backend 2 is drained
(``PATCH {prefix}/api/backends``, on a new connection: any worker takes it), at 55% put
in ``maint``, at 70% made ``ready`` again.

It prints: failed GETs (anything but a 200, or no answer; the target is 0), the GETs
backend 2 answered that were sent after the drain's answer plus one second and before
``ready`` (the target is 0), the GETs in flight on backend 2 when the drain was answered
and how they ended, and backend 2's share of answers per second after ``ready`` (with
``--slow-start``, a ramp). Exit 1 if a target is missed.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.drill import ROOT, free_port, percentile, wait_port  # noqa: E402

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
READY = "ready: SIGHUP reloads the config"
CLIENT_TIMEOUT = 10.0
MAX_CLIENTS = 50
SETTLE = 1.0          # seconds after the drain's answer by which no new request may reach it


def backend_app(name: str):
    def app(environ, start_response):
        query = environ.get("QUERY_STRING", "")
        delay = int(query[3:]) if query.startswith("ms=") and query[3:].isdigit() else 0
        gevent.sleep(delay / 1000)
        body = name.encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app


def serve_backend(port: int, name: str) -> None:
    from app.server.standalone import Server
    Server(("127.0.0.1", port), backend_app(name), max_connections=1000).serve_forever()


class Gunicorn:
    """The Procfile's gunicorn with three workers on a drill config; its output."""

    def __init__(self, urls: list[str], slow_start: str):
        self.port = free_port()
        config = {"host": "127.0.0.1", "port": self.port, "backends": urls,
                  "slow_start": slow_start, "access_log": False,
                  "health_check": {"interval": "1s", "timeout": "500ms", "rise": 2, "fall": 2},
                  "shutdown_timeout": "2s"}
        self.path = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False).name
        with open(self.path, "w") as file:
            yaml.safe_dump(config, file)
        self.output = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [GUNICORN, "wsgi:application"], cwd=ROOT, stdout=self.output, stderr=subprocess.STDOUT,
            env={**os.environ, "MYPROXY_CONFIG": self.path, "PORT": str(self.port),
                 "WEB_CONCURRENCY": "3", "PYTHONUNBUFFERED": "1"})

    def text(self) -> str:
        self.output.seek(0)
        return self.output.read().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(READY) >= 3:
                wait_port(self.port)
                return
            gevent.sleep(0.1)
        raise RuntimeError("gunicorn did not start:\n" + self.text())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        os.unlink(self.path)


def set_state(port: int, url: str, state: str) -> tuple[float, float]:
    """PATCH one backend's admin state on a new connection; the times it was sent and
    answered."""
    sent = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    body = json.dumps({"backend": url, "state": state})
    connection.request("PATCH", "/_myproxy/api/backends", body=body,
                       headers={"Content-Type": "application/json", "Connection": "close"})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{state}: {response.status} {answer!r}")
    return sent, time.monotonic()


def client(port: int, keepalive: bool, until: float, results: list) -> None:
    """GETs one after another until ``until``: (sent, answered, who or why not)."""
    connection = None
    while time.monotonic() < until:
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
        sent = time.monotonic()
        try:
            connection.request("GET", f"/drill?ms={random.randint(0, 200)}",
                               headers={} if keepalive else {"Connection": "close"})
            response = connection.getresponse()
            body = response.read().decode()
            outcome = body if response.status == 200 else f"{response.status} {body[:80]}"
        except (OSError, http.client.HTTPException) as error:
            outcome = f"failed: {type(error).__name__}: {error}"
            connection.close()
            connection = None
        results.append((sent, time.monotonic(), outcome))
        if not keepalive and connection is not None:
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def run(seconds: float, keepalive: int, oneshot: int, slow_start: str) -> int:
    ports = [free_port() for _ in range(3)]
    backends = [subprocess.Popen([sys.executable, __file__, "--backend", str(port), f"backend {i}"],
                                 cwd=ROOT) for i, port in enumerate(ports, 1)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    proxy = None
    try:
        for port in ports:
            wait_port(port)
        proxy = Gunicorn(urls, slow_start)
        proxy.wait_ready()
        results: list = []
        start = time.monotonic()
        until = start + seconds
        clients = [gevent.spawn(client, proxy.port, True, until, results) for _ in range(keepalive)]
        clients += [gevent.spawn(client, proxy.port, False, until, results) for _ in range(oneshot)]
        gevent.sleep(seconds * 0.25)
        drained = set_state(proxy.port, urls[1], "drain")[1]
        gevent.sleep(max(0.0, start + seconds * 0.55 - time.monotonic()))
        maint = set_state(proxy.port, urls[1], "maint")[1]
        gevent.sleep(max(0.0, start + seconds * 0.70 - time.monotonic()))
        # A GET sent once the ready is on its way may go to backend 2: the window of
        # drained GETs ends when the ready was sent, not when it was answered.
        readying, ready = set_state(proxy.port, urls[1], "ready")
        gevent.joinall(clients, timeout=seconds + CLIENT_TIMEOUT + 5)
    finally:
        if proxy is not None:
            proxy.stop()
        for backend in backends:
            backend.kill()
            backend.wait(timeout=5)
    return report(results, start, seconds, drained, maint, (readying, ready), keepalive, oneshot,
                  slow_start)


def report(results, start, seconds, drained, maint, ready, keepalive, oneshot, slow_start) -> int:
    """``ready``: when the ready was sent, and when it was answered."""
    readying, ready = ready
    failures = [r for r in results if not r[2].startswith("backend ")]
    late = [r for r in results if r[2] == "backend 2" and drained + SETTLE <= r[0] < readying]
    in_flight = [r for r in results if r[2] == "backend 2" and r[0] < drained < r[1]]
    latencies = [(r[1] - r[0]) * 1000 for r in results]
    print(f"\n== admin drill: {len(results)} GETs in {seconds:.0f}s through gunicorn (3 workers), "
          f"3 backends, {keepalive} keep-alive + {oneshot} new-connection clients, "
          f"slow_start {slow_start}")
    print(f"   backend 2: drain answered at {drained - start:.2f}s, maint at {maint - start:.2f}s, "
          f"ready at {ready - start:.2f}s")
    print(f"   failed GETs: {len(failures)}")
    print(f"   GETs backend 2 answered, sent from the drain's answer + {SETTLE:.0f}s until ready: "
          f"{len(late)}")
    last = max((r[0] for r in results if r[2] == "backend 2" and drained <= r[0] < readying),
               default=None)
    print("   last GET it answered sent after the drain: " +
          ("none" if last is None else f"{(last - drained) * 1000:.0f} ms after the answer"))
    print(f"   in flight on it when the drain was answered: {len(in_flight)}, all answered 200 "
          f"by it: {all(r[2] == 'backend 2' for r in in_flight)}")
    print(f"   latency ms: p50 {percentile(latencies, .5):.1f}  p99 {percentile(latencies, .99):.1f}"
          f"  max {max(latencies, default=0):.1f}")
    shares = []
    for second in range(int(start + seconds - ready)):
        window = [r for r in results if ready + second <= r[0] < ready + second + 1]
        share = sum(1 for r in window if r[2] == "backend 2") / max(1, len(window))
        shares.append(f"{share:.0%}")
    print(f"   backend 2's share per second after ready: {' '.join(shares)} (even: 33%)")
    for sent, answered, outcome in failures[:10]:
        print(f"   FAILED at {sent - start:.2f}s: {outcome}")
    missed = len(failures) + len(late)
    print(f"\n{'PASS' if missed == 0 else 'FAIL'}")
    return 0 if missed == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the run (max 60)")
    parser.add_argument("--keepalive", type=int, default=6, help="keep-alive clients")
    parser.add_argument("--oneshot", type=int, default=3, help="clients with a new connection per GET")
    parser.add_argument("--slow-start", default="2s", help="the proxy's slow_start")
    parser.add_argument("--backend", nargs=2, metavar=("PORT", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        serve_backend(int(args.backend[0]), args.backend[1])
        return 0
    keepalive = max(0, min(args.keepalive, MAX_CLIENTS))
    oneshot = max(0, min(args.oneshot, MAX_CLIENTS - keepalive))
    return run(min(args.seconds, 60.0), keepalive, oneshot, args.slow_start)


if __name__ == "__main__":
    sys.exit(main())
