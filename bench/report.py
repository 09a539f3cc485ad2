"""Summarising measurements and rendering them: medians, ratios to nginx and Caddy, targets, Markdown.

Pure functions over plain dicts (the same dicts the JSON file holds): no I/O, no clocks.
A *record* is one wrk run of one contender on one path at one concurrency; a *row* is the
summary of the records of one contender in one such cell.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

MIB = 1024 * 1024
BASELINE = "nginx"                  # ratios are to this contender, in the same run
GO_BASELINE = "caddy"               # ...and CPU also to this one: the Go design (issue 17)
CADDY_CPU_LIMIT = 1.9               # MyProxy's CPU per small request, at most this times Caddy's
MYPROXY_NAMES = ("myproxy", "myproxy-routes", "myproxy-gunicorn", "myproxy-gunicorn-gevent")
ROUTE_LOOKUP_LIMIT = 1.05     # CPU per request with 100 routes, at most this times none
STANDALONE = "myproxy"              # python wsgi.py: what each way of running under gunicorn is held to


def summarise(records: list[dict]) -> list[dict]:
    """One row per (path, connections, contender), in the order cells were first measured:
    medians of req/s, latency and CPU per request over the rounds, errors summed, the
    highest peak RSS, req/s and CPU relative to nginx's medians in the same cell, and CPU
    relative to Caddy's (None where that contender did not run)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["path"], record["connections"], record["contender"]),
                          []).append(record)
    rows = []
    for (path, connections, contender), runs in groups.items():
        rows.append({
            "path": path, "connections": connections, "contender": contender,
            "runs": len(runs),
            "rps": statistics.median(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "cpu_us": statistics.median(r["cpu_us_per_request"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_bytes"] for r in runs) / MIB,
        })
    baseline = {(row["path"], row["connections"]): row for row in rows
                if row["contender"] == BASELINE}
    go = {(row["path"], row["connections"]): row for row in rows
          if row["contender"] == GO_BASELINE}
    for row in rows:
        base = baseline.get((row["path"], row["connections"]))
        row["rps_vs_nginx"] = row["rps"] / base["rps"] if base and base["rps"] else None
        row["cpu_vs_nginx"] = row["cpu_us"] / base["cpu_us"] if base and base["cpu_us"] else None
        base = go.get((row["path"], row["connections"]))
        row["cpu_vs_caddy"] = row["cpu_us"] / base["cpu_us"] if base and base["cpu_us"] else None
    order = {cell: index for index, cell in enumerate(dict.fromkeys(
        (r["path"], r["connections"]) for r in records))}
    contenders = list(dict.fromkeys(r["contender"] for r in records))
    rows.sort(key=lambda row: (order[(row["path"], row["connections"])],
                               contenders.index(row["contender"])))
    return rows


@dataclass(frozen=True)
class Target:
    measure: str
    goal: str
    results: dict            # contender -> (text, met: bool | None)


def targets(rows: list[dict]) -> list[Target]:
    """The issue's throughput and latency targets, checked for each MyProxy contender."""
    def row(contender, path, connections):
        return next((r for r in rows if (r["contender"], r["path"], r["connections"])
                     == (contender, path, connections)), None)

    present = [name for name in MYPROXY_NAMES if any(r["contender"] == name for r in rows)]
    checks = [
        ("CPU per proxied request, 100 B, c=50", "<= 200 us",
         lambda name: _check(row(name, "/100b", 50), "cpu_us", lambda v: v <= 200, "{:.0f} us")),
        ("CPU per request vs Caddy's, 100 B, c=50", f"<= {CADDY_CPU_LIMIT} x",
         lambda name: _check(row(name, "/100b", 50), "cpu_vs_caddy",
                             lambda v: v <= CADDY_CPU_LIMIT, "{:.2f} x")),
        ("p99 latency at c=500, 100 B", "<= 100 ms, or <= Caddy's",
         lambda name: _check(row(name, "/100b", 500), "p99_ms",
                             lambda v: v <= max(100, _value(row(GO_BASELINE, "/100b", 500), "p99_ms")),
                             "{:.1f} ms")),
        ("1 MiB responses, req/s vs nginx", ">= 0.8 x",
         lambda name: _check(row(name, "/1m", 50), "rps_vs_nginx", lambda v: v >= 0.8, "{:.2f} x")),
        ("errors in every run", "0",
         lambda name: _errors([r for r in rows if r["contender"] == name])),
        ("CPU per request with 100 routes vs none, 100 B, c=50", f"<= {ROUTE_LOOKUP_LIMIT:.2f} x",
         lambda name: _route_cost(row(name, "/100b", 50), row("myproxy", "/100b", 50))
         if name == "myproxy-routes" else ("-", None)),
        ("CPU per request, 100 B, c=50, vs python wsgi.py", "<= 1.25 x",
         lambda name: _versus(row(name, "/100b", 50), row(STANDALONE, "/100b", 50), "cpu_us",
                              lambda v: v <= 1.25)),
        ("1 MiB responses, req/s vs python wsgi.py", ">= 0.9 x",
         lambda name: _versus(row(name, "/1m", 50), row(STANDALONE, "/1m", 50), "rps",
                              lambda v: v >= 0.9)),
    ]
    return [Target(measure, goal, {name: check(name) for name in present})
            for measure, goal, check in checks]


def _route_cost(routed, plain):
    if routed is None or plain is None or not plain.get("cpu_us"):
        return "-", None
    ratio = routed["cpu_us"] / plain["cpu_us"]
    return f"{ratio:.3f} x ({routed['cpu_us']:.0f} vs {plain['cpu_us']:.0f} us)", \
        ratio <= ROUTE_LOOKUP_LIMIT


TLS_CPU_TARGET = 1.3          # keep-alive HTTPS CPU per request over plain HTTP's (issue 15)


def https_table(rows: list[dict]) -> str:
    """MyProxy over HTTPS against itself over HTTP and against nginx over HTTPS (same
    certificate): keep-alive CPU per request, and new handshakes a second. "" when no
    HTTPS contender ran."""
    def row(contender, path):
        return next((r for r in rows if (r["contender"], r["path"], r["connections"])
                     == (contender, path, 50)), None)

    mine, nginx = row("myproxy-https", "/100b"), row("nginx-https", "/100b")
    mine_new, nginx_new = row("myproxy-https", "/100b new-conn"), row("nginx-https", "/100b new-conn")
    plain = row("myproxy", "/100b")
    if mine is None and nginx is None:
        return ""
    lines = ["| measure | MyProxy (python wsgi.py) | nginx | ratio | target |",
             "|---|---:|---:|---:|---|"]

    def line(measure, left, right, key, fmt, target=""):
        a = left.get(key) if left else None
        b = right.get(key) if right else None
        ratio = a / b if a and b else None
        lines.append(f"| {measure} | {_number(a, fmt)} | {_number(b, fmt)} | "
                     f"{_number(ratio, '{:.2f} x')} | {target} |")

    line("keep-alive HTTPS, 100 B, c=50: req/s", mine, nginx, "rps", "{:,.0f}")
    line("keep-alive HTTPS: CPU us/request", mine, nginx, "cpu_us", "{:.0f}")
    line("new TLS handshakes a second (Connection: close), c=50", mine_new, nginx_new, "rps",
         "{:,.0f}")
    line("CPU us per new connection (handshake + request)", mine_new, nginx_new, "cpu_us", "{:.0f}")
    if mine and plain and mine.get("cpu_us") and plain.get("cpu_us"):
        ratio = mine["cpu_us"] / plain["cpu_us"]
        verdict = "met" if ratio <= TLS_CPU_TARGET else "NOT met"
        lines.append(f"| MyProxy keep-alive CPU/request, HTTPS vs plain HTTP (same run) | "
                     f"{mine['cpu_us']:.0f} vs {plain['cpu_us']:.0f} us | | {ratio:.2f} x | "
                     f"<= {TLS_CPU_TARGET} x ({verdict}) |")
    errors = sum(r["errors"] for r in rows if r["contender"] in ("myproxy-https", "nginx-https"))
    lines.append(f"| errors over HTTPS | | | | {errors} ({'met' if errors == 0 else 'NOT met'}) |")
    return "\n".join(lines)


def _value(row, key) -> float:
    """``row[key]``, or 0 where the row or the figure is missing."""
    return (row or {}).get(key) or 0


def _check(row, key, passes, fmt):
    if row is None or row.get(key) is None:
        return ("not measured", None)
    return (fmt.format(row[key]), bool(passes(row[key])))


def _versus(row, standalone, key, passes):
    if row is None or standalone is None or not standalone.get(key):
        return ("not measured", None)
    if row is standalone:
        return ("1.00 x", None)
    ratio = row[key] / standalone[key]
    return (f"{ratio:.2f} x", bool(passes(ratio)))


def _errors(rows):
    if not rows:
        return ("not measured", None)
    total = sum(r["errors"] for r in rows)
    return (str(total), total == 0)


def _number(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    """The results as one Markdown table, a group of rows per path and concurrency."""
    lines = ["| path | c | contender | req/s | x nginx | p50 ms | p99 ms | errors | "
             "CPU us/req | x nginx CPU | x Caddy CPU | peak RSS MiB |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append("| " + " | ".join([
            row["path"], str(row["connections"]), row["contender"],
            _number(row["rps"], "{:,.0f}"), _number(row["rps_vs_nginx"], "{:.2f}"),
            _number(row["p50_ms"], "{:.2f}"), _number(row["p99_ms"], "{:.2f}"),
            str(row["errors"]), _number(row["cpu_us"], "{:.0f}"),
            _number(row["cpu_vs_nginx"], "{:.1f}"), _number(row.get("cpu_vs_caddy"), "{:.2f}"),
            _number(row["peak_rss_mib"], "{:.1f}"),
        ]) + " |")
    return "\n".join(lines)


def targets_table(checked: list[Target]) -> str:
    names = list(dict.fromkeys(name for target in checked for name in target.results))
    lines = ["| measure | target | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for target in checked:
        cells = []
        for name in names:
            text, met = target.results.get(name, ("-", None))
            cells.append(text + ("" if met is None else " (met)" if met else " (NOT met)"))
        lines.append(f"| {target.measure} | {target.goal} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_lines(meta: dict) -> str:
    """A bullet list describing the machine and the run, from ``meta``."""
    keys = [("machine", "machine"), ("software", "software"), ("run", "run"),
            ("command", "command"), ("contenders", "contenders")]
    lines = []
    for key, label in keys:
        value = meta.get(key)
        if isinstance(value, dict):
            value = "; ".join(f"{k}: {v}" for k, v in value.items())
        if value:
            lines.append(f"- {label}: {value}")
    return "\n".join(lines)


def disturbance(records: list[dict]) -> str:
    """How busy the machine was with other work during the runs, as one sentence."""
    shares = [r["others_cpu_share"] for r in records if r.get("others_cpu_share") is not None]
    if not shares:
        return ""
    return (f"Other processes (not started by the benchmark) used {statistics.median(shares):.0%} "
            f"of the machine's CPU during the median run, {max(shares):.0%} at most.")


def render(meta: dict, rows: list[dict], records: list[dict] = ()) -> str:
    """The whole Markdown report: the run, the results table, the targets."""
    return "\n\n".join(part for part in [
        f"# MyProxy benchmark, {meta.get('started', '')}",
        machine_lines(meta),
        disturbance(list(records)),
        markdown_table(rows),
        "Medians over the rounds; errors summed; CPU is the measured process tree's user+system "
        "time over the run divided by the requests wrk completed; peak RSS is VmHWM summed over "
        "the process tree. `direct` is wrk straight at one backend: its CPU and RSS are the "
        "backend's.",
        "## Targets (issues 7, 17 and 18)",
        targets_table(targets(rows)),
        "## HTTPS (issue 15)" if https_table(rows) else "",
        https_table(rows),
    ] if part) + "\n"
