"""Running wrk and reading its report.

``parse`` turns the text ``wrk --latency`` prints into a ``WrkResult`` (pure); ``run``
runs wrk once, bounded in time. wrk keeps connections alive and counts as errors only
what it prints: responses with a status of 400 and up, and socket errors (connect, read,
write, timeout). Knows nothing of what is behind the URL.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

# wrk's own unit suffixes (src/units.c): time in us/ms/s/m/h.
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")

RUN_SLACK = 30.0      # seconds allowed beyond the test's duration before wrk is killed


class WrkError(RuntimeError):
    """wrk failed or printed something this parser does not understand."""


@dataclass(frozen=True)
class WrkResult:
    requests: int          # completed requests
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    socket_errors: int     # connect + read + write + timeout
    bad_status: int        # responses with status >= 400

    @property
    def errors(self) -> int:
        return self.socket_errors + self.bad_status


def parse(text: str) -> WrkResult:
    """Read the report of ``wrk --latency``; raise ``WrkError`` when a figure is missing."""
    percentiles = {int(p): float(value) * _TIME_UNITS[unit]
                   for p, value, unit in _PERCENTILE.findall(text)}
    requests = _REQUESTS.search(text)
    rate = _RATE.search(text)
    if requests is None or rate is None or set(percentiles) != {50, 75, 90, 99}:
        raise WrkError(f"unexpected wrk output:\n{text}")
    sockets = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=float(requests.group(2)) * _TIME_UNITS[requests.group(3)] / 1e3,
        rps=float(rate.group(1)),
        p50_ms=percentiles[50], p75_ms=percentiles[75],
        p90_ms=percentiles[90], p99_ms=percentiles[99],
        socket_errors=sum(map(int, sockets.groups())) if sockets else 0,
        bad_status=int(non_2xx.group(1)) if non_2xx else 0,
    )


def command(wrk: str, url: str, connections: int, duration: float, threads: int = 1,
            timeout: float = 5.0, headers: tuple[str, ...] = ()) -> list[str]:
    """The wrk command line: keep-alive (wrk's default; ``headers`` may say
    ``Connection: close``, a new connection, and over https a new handshake, per request),
    latency distribution on."""
    extra = [part for header in headers for part in ("-H", header)]
    return [wrk, f"-t{max(1, min(threads, connections))}", f"-c{connections}",
            f"-d{duration:g}s", f"--timeout={timeout:g}s", "--latency", *extra, url]


def run(wrk: str, url: str, connections: int, duration: float, threads: int = 1,
        headers: tuple[str, ...] = ()) -> WrkResult:
    """Run wrk once; raise ``WrkError`` if it fails, prints no report, or overruns."""
    try:
        done = subprocess.run(command(wrk, url, connections, duration, threads, headers=headers),
                              capture_output=True, text=True, timeout=duration + RUN_SLACK)
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {duration + RUN_SLACK:.0f}s") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse(done.stdout)
