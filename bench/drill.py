"""Failover drill: a steady stream of GETs through ``python wsgi.py`` and three backends
while one backend dies and comes back (``kill``), and while one hangs (``hang``).

    python bench/drill.py [--seconds 20] [--rate 200] [--read-timeout 1s] [--policy NAME]

Everything runs on 127.0.0.1 and is bounded: each run lasts ``--seconds`` (at most 60)
and sends ``rate × seconds`` requests (rate at most 2000/s), open-loop: a GET starts every
``1 / rate`` seconds however many are still waiting, so a hang costs what it would cost
real traffic. Each run starts three backend processes and a proxy:

- ``kill``: backend 2 gets SIGKILL at 25% of the run and is started again at 60%;
- ``hang``: backend 2 gets SIGSTOP at 25% (it accepts connections, answers nothing)
  and SIGCONT at 60%.

It prints, per run: failed GETs (anything but a 200, or no answer), retries (from the
proxy's access log: extra attempts, and stale keep-alive reconnects), latency
percentiles seen by the clients, and the proxy's backend transitions with their time.
The target is zero failed GETs; the exit code is 1 otherwise.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import yaml  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
ACCESS = re.compile(r"myproxy\.access .*status=(\S+) .*attempts=(\d+) tried=(\S+)")
MAX_OUTSTANDING = 2000       # requests waiting at once, at most
CLIENT_TIMEOUT = 10.0        # a GET with no answer after this counts as failed
EVENT = re.compile(r"(backend (?:down|up|ejected|passes)[^\n]*|retry budget spent[^\n]*)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(port: int, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--backend", str(port), name], cwd=ROOT)


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Proxy:
    """``python wsgi.py`` with a drill config; its output lines, timestamped."""

    def __init__(self, urls, read_timeout: str, policy: str, started: float):
        config = {
            "host": "127.0.0.1", "port": 0, "backends": urls, "policy": policy,
            "health_check": {"interval": "1s", "timeout": "500ms", "rise": 2, "fall": 2},
            "timeouts": {"connect": "1s", "read": read_timeout},
            "shutdown_timeout": "2s",
        }
        self.config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(config, self.config)
        self.config.close()
        self.proc = subprocess.Popen([sys.executable, "wsgi.py", "--config", self.config.name],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[tuple[float, str]] = []
        self._started = started
        self._reader = gevent.spawn(self._read)
        self.port = None

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic() - self._started, raw.decode("utf-8", "replace")))

    def wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.port is None:
            for _, line in self.lines:
                match = LISTENING.search(line)
                if match:
                    self.port = int(match.group(1))
            gevent.sleep(0.05)
        if self.port is None:
            raise RuntimeError("the proxy did not start:\n" + "".join(l for _, l in self.lines))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._reader.join(timeout=2)
        os.unlink(self.config.name)


class Load:
    """Open-loop GETs: one starts every ``1 / rate`` seconds however many are still
    waiting, as real clients arrive; each reuses an idle keep-alive connection or opens one."""

    def __init__(self, port: int, origin: float):
        self.port = port
        self.origin = origin
        self.results: list[tuple[float, float, object]] = []   # (start, seconds, 200 or why not)
        self._idle: list[http.client.HTTPConnection] = []

    def run(self, rate: float, until: float) -> None:
        pool = gevent.pool.Pool(MAX_OUTSTANDING)
        due = time.monotonic()
        while due < until:
            gevent.sleep(max(0.0, due - time.monotonic()))
            due += 1 / rate
            pool.spawn(self.one)
        pool.join(timeout=CLIENT_TIMEOUT + 5)

    def one(self) -> None:
        started = time.monotonic()
        conn = self._idle.pop() if self._idle else http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
        try:
            conn.request("GET", "/drill")
            response = conn.getresponse()
            body = response.read()
            outcome = 200 if response.status == 200 else f"{response.status} {body[:80]!r}"
            self._idle.append(conn)
        except (OSError, http.client.HTTPException) as error:
            outcome = f"{type(error).__name__}: {error}"
            conn.close()
        self.results.append((started - self.origin, time.monotonic() - started, outcome))

    def close(self) -> None:
        for conn in self._idle:
            conn.close()


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def run(scenario: str, seconds: float, rate: float, read_timeout: str, policy: str) -> int:
    ports = [free_port() for _ in range(3)]
    backends = [start_backend(port, f"backend {i}") for i, port in enumerate(ports, 1)]
    proxy = None
    try:
        for port in ports:
            wait_port(port)
        started = time.monotonic()
        proxy = Proxy([f"http://127.0.0.1:{port}" for port in ports], read_timeout, policy, started)
        proxy.wait_listening()
        victim = backends[1]
        load = Load(proxy.port, started)
        runner = gevent.spawn(load.run, rate, time.monotonic() + seconds)
        gevent.sleep(seconds * 0.25)
        if scenario == "kill":
            victim.kill()
            victim.wait(timeout=5)
        else:
            victim.send_signal(signal.SIGSTOP)
        broke = time.monotonic() - started
        gevent.sleep(seconds * 0.35)
        if scenario == "kill":
            victim = backends[1] = start_backend(ports[1], "backend 2")
        else:
            victim.send_signal(signal.SIGCONT)
        healed = time.monotonic() - started
        runner.join(timeout=seconds + CLIENT_TIMEOUT + 10)
        load.close()
        gevent.sleep(0.5)                    # let the last access lines arrive
    finally:
        if proxy is not None:
            proxy.stop()
        for backend in backends:
            if backend.poll() is None:
                backend.send_signal(signal.SIGCONT)
                backend.kill()
                backend.wait(timeout=5)
    return report(scenario, seconds, load.results, proxy, broke, healed, policy)


def report(scenario, seconds, results, proxy, broke, healed, policy) -> int:
    failures = [r for r in results if r[2] != 200]
    latencies = [r[1] * 1000 for r in results]
    access = [ACCESS.search(line) for _, line in proxy.lines]
    access = [match for match in access if match]
    retried = [m for m in access if int(m.group(2)) > 1 and "(stale)" not in m.group(3)]
    stale = sum(m.group(3).count("(stale)") for m in access)
    extra = sum(int(m.group(2)) - 1 - m.group(3).count("(stale)") for m in access)
    action = "killed" if scenario == "kill" else "stopped (SIGSTOP)"
    back = "restarted" if scenario == "kill" else "continued (SIGCONT)"
    print(f"\n== drill {scenario} ({policy}): {len(results)} GETs in {seconds:.0f}s, 3 backends; "
          f"backend 2 {action} at {broke:.1f}s, {back} at {healed:.1f}s")
    print(f"   failed GETs: {len(failures)}   requests retried: {len(retried)} "
          f"({extra} extra attempts)   stale keep-alive reconnects: {stale}")
    print(f"   latency ms: p50 {percentile(latencies, .50):.1f}  p99 {percentile(latencies, .99):.1f}"
          f"  p99.9 {percentile(latencies, .999):.1f}  max {max(latencies, default=0):.1f}")
    phases = {"before": [], "broken": [], "after": []}
    for at, latency, _ in results:
        phase = "before" if at < broke else "broken" if at < healed else "after"
        phases[phase].append(latency * 1000)
    print("   p99 ms by phase: " + "  ".join(f"{name} {percentile(values, .99):.1f} (n={len(values)})"
                                             for name, values in phases.items()))
    for at, line in proxy.lines:
        event = EVENT.search(line)
        if event:
            print(f"   {at:5.1f}s {event.group(1).strip()}")
    for started, latency, outcome in failures[:10]:
        print(f"   FAILED after {latency * 1000:.0f} ms: {outcome}")
    return len(failures)


def serve_backend(port: int, name: str) -> None:
    """A drill backend: the demo app on a pywsgi server (TCP_NODELAY, no access log)."""
    sys.path.insert(0, ROOT)
    from app.demo import demo_app
    from app.server.standalone import Server
    server = Server(("127.0.0.1", port), demo_app(name), max_connections=1000)
    server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run (max 60)")
    parser.add_argument("--rate", type=float, default=200.0, help="GETs per second (max 2000)")
    parser.add_argument("--policy", default="round_robin", help="the proxy's policy")
    parser.add_argument("--read-timeout", default="1s", help="the proxy's timeouts.read")
    parser.add_argument("--only", choices=("kill", "hang"), help="run one scenario")
    parser.add_argument("--backend", nargs=2, metavar=("PORT", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        serve_backend(int(args.backend[0]), args.backend[1])
        return 0
    seconds, rate = min(args.seconds, 60.0), min(args.rate, 2000.0)
    failed = 0
    for scenario in [args.only] if args.only else ["kill", "hang"]:
        failed += run(scenario, seconds, rate, args.read_timeout, args.policy)
    print(f"\n{'PASS' if failed == 0 else 'FAIL'}: {failed} failed GETs in all")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
