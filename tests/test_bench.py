"""The benchmark's pure parts: wrk's report, /proc files, summaries, tables, configs."""
import pytest

from bench import configs, procfs, report, wrk
from bench.memory import idle_overrides
from bench.profile import summarise as summarise_profile

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:50225/100b
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    29.35ms   10.72ms 120.25ms   82.32%
    Req/Sec     1.73k   303.69     2.07k    90.00%
  Latency Distribution
     50%   28.21ms
     75%   34.13ms
     90%   39.12ms
     99%   76.50ms
  3430 requests in 2.00s, 1.27MB read
Requests/sec:   1712.87
Transfer/sec:    649.02KB
"""

WRK_WITH_ERRORS = """\
Running 3s test @ http://127.0.0.1:8080/1m
  1 threads and 500 connections
  Latency Distribution
     50%  612.00us
     75%  900.00us
     90%    1.50ms
     99%    2.01s
  120000 requests in 3.00s, 12.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 7
Requests/sec:  40000.00
Transfer/sec:      4.00MB
"""


def test_wrk_report_is_parsed():
    result = wrk.parse(WRK_OUTPUT)
    assert (result.requests, result.seconds, result.rps) == (3430, 2.0, 1712.87)
    assert (result.p50_ms, result.p75_ms, result.p90_ms, result.p99_ms) == (28.21, 34.13, 39.12, 76.5)
    assert result.errors == 0


def test_wrk_units_and_errors_are_read():
    result = wrk.parse(WRK_WITH_ERRORS)
    assert result.p50_ms == pytest.approx(0.612)
    assert result.p99_ms == pytest.approx(2010.0)
    assert (result.socket_errors, result.bad_status, result.errors) == (10, 7, 17)


def test_wrk_output_without_a_latency_distribution_is_refused():
    text = WRK_OUTPUT.replace("  Latency Distribution\n", "").replace("     99%   76.50ms\n", "")
    with pytest.raises(wrk.WrkError):
        wrk.parse(text)


def test_wrk_command_keeps_threads_within_connections():
    args = wrk.command("/usr/bin/wrk", "http://127.0.0.1:1/100b", 1, 3, threads=2)
    assert args == ["/usr/bin/wrk", "-t1", "-c1", "-d3s", "--timeout=5s", "--latency",
                    "http://127.0.0.1:1/100b"]


def test_proc_stat_is_parsed_past_a_command_name_with_spaces_and_parentheses():
    text = "4242 (we (ird) name) S 17 4242 4242 0 -1 4194560 1 2 3 4 150 25 7 8 20 0 1 0 98765 1 2"
    stat = procfs.parse_stat(text)
    assert (stat.pid, stat.ppid) == (4242, 17)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (150, 25, 7, 8)
    assert (stat.ticks, stat.starttime) == (190, 98765)


def test_proc_status_sizes_are_bytes():
    values = procfs.parse_status("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t1024 kB\nThreads:\t1\n")
    assert values == {"VmHWM": 2048 * 1024, "VmRSS": 1024 * 1024}


def test_descendants_are_the_tree_under_the_root_only():
    def stat(pid, ppid):
        return procfs.Stat(pid, ppid, 0, 0, 0, 0, 0)
    stats = {s.pid: s for s in (stat(1, 0), stat(10, 1), stat(11, 10), stat(12, 10),
                                stat(13, 11), stat(20, 1))}
    assert procfs.descendants(10, stats) == [10, 11, 12, 13]
    assert procfs.descendants(99, stats) == []


def test_live_process_figures_are_read_for_this_process():
    import os
    assert procfs.cpu_seconds(os.getpid()) > 0
    assert procfs.memory(os.getpid())["VmHWM"] > 0


def _record(contender, rps, cpu_us, path="/100b", connections=50, errors=0, p99=10.0):
    return {"contender": contender, "path": path, "connections": connections, "rps": rps,
            "p50_ms": 1.0, "p99_ms": p99, "errors": errors, "cpu_us_per_request": cpu_us,
            "peak_rss_bytes": 40 * report.MIB}


def test_summary_takes_medians_sums_errors_and_divides_by_nginx():
    records = [_record("nginx", rps, 10) for rps in (900, 1000, 1100)] + [
        _record("myproxy", rps, cpu, errors=1) for rps, cpu in ((100, 500), (250, 400), (200, 450))]
    rows = report.summarise(records)
    assert [row["contender"] for row in rows] == ["nginx", "myproxy"]
    mine = rows[1]
    assert (mine["runs"], mine["rps"], mine["cpu_us"], mine["errors"]) == (3, 200, 450, 3)
    assert mine["rps_vs_nginx"] == pytest.approx(0.2)
    assert mine["cpu_vs_nginx"] == pytest.approx(45.0)


def test_table_shows_a_dash_when_nginx_was_not_measured():
    rows = report.summarise([_record("myproxy", 2000, 480)])
    table = report.markdown_table(rows)
    assert table.splitlines()[2] == "| /100b | 50 | myproxy | 2,000 | - | 1.00 | 10.00 | 0 | 480 | - | - | 40.0 |"


def test_targets_say_which_are_met():
    rows = report.summarise([
        _record("nginx", 1000, 10), _record("myproxy", 2000, 150),
        _record("nginx", 30000, 10, connections=500), _record("myproxy", 2000, 150, connections=500, p99=300),
        _record("nginx", 500, 100, path="/1m"), _record("myproxy", 450, 900, path="/1m"),
    ])
    results = {t.measure: t.results["myproxy"] for t in report.targets(rows)}
    assert results["CPU per proxied request, 100 B, c=50"] == ("150 us", True)
    assert results["p99 latency at c=500, 100 B"] == ("300.0 ms", False)
    assert results["1 MiB responses, req/s vs nginx"] == ("0.90 x", True)
    assert results["errors in every run"] == ("0", True)
    assert "(NOT met)" in report.targets_table(report.targets(rows))


def test_profile_counts_self_at_the_leaf_and_cumulative_once_per_sample():
    lines = ["main (a.py:1);f (a.py:5);f (a.py:5);g (b.py:2) 3\n",
             "main (a.py:1);h (c.py:9) 1\n", "garbage\n",
             "_WorkerGreenlet.run (gevent/threadpool.py:199);acquire_with_timeout (gevent/_threading.py:34) 9\n"]
    total, own, cumulative = summarise_profile(lines)
    assert total == 4
    assert own == {"g (b.py:2)": 3, "h (c.py:9)": 1}
    assert cumulative["f (a.py:5)"] == 3 and cumulative["main (a.py:1)"] == 4


def test_balancer_configs_name_every_backend_with_keep_alive():
    backends = ["http://127.0.0.1:5001", "http://127.0.0.1:5002"]
    nginx = configs.nginx_balancer("/w", 8080, backends)
    assert "server 127.0.0.1:5001;" in nginx and "server 127.0.0.1:5002;" in nginx
    assert "keepalive 100;" in nginx and "proxy_http_version 1.1;" in nginx
    assert "listen 127.0.0.1:8080;" in nginx
    haproxy = configs.haproxy_balancer(8081, backends)
    assert "balance roundrobin" in haproxy and "bind 127.0.0.1:8081" in haproxy
    assert "server b1 127.0.0.1:5002" in haproxy


def test_caddy_config_balances_round_robin_on_loopback_with_keep_alive():
    backends = ["http://127.0.0.1:5001", "http://127.0.0.1:5002"]
    caddy = configs.caddy_balancer(8082, backends)
    assert "http://:8082 {" in caddy and "bind 127.0.0.1" in caddy
    assert "reverse_proxy 127.0.0.1:5001 127.0.0.1:5002 {" in caddy
    assert "lb_policy round_robin" in caddy and "keepalive_idle_conns_per_host 100" in caddy
    assert "admin off" in caddy and "auto_https off" in caddy and "log" not in caddy


def test_cpu_is_also_given_as_a_ratio_to_caddy_and_checked_against_the_target():
    rows = report.summarise([_record("caddy", 1000, 80), _record("myproxy", 900, 160),
                             _record("nginx", 2000, 20)])
    mine = next(row for row in rows if row["contender"] == "myproxy")
    assert mine["cpu_vs_caddy"] == pytest.approx(2.0)
    assert mine["cpu_vs_nginx"] == pytest.approx(8.0)
    results = {t.measure: t.results["myproxy"] for t in report.targets(rows)}
    assert results["CPU per request vs Caddy's, 100 B, c=50"] == ("2.00 x", False)
    assert "| /100b | 50 | myproxy | 900 | 0.45 | 1.00 | 10.00 | 0 | 160 | 8.0 | 2.00 | 40.0 |" \
        in report.markdown_table(rows)


def test_the_c500_tail_target_is_also_met_at_or_under_caddys_p99():
    def rows(caddy_p99):
        return report.summarise([_record("myproxy", 7000, 130, connections=500, p99=101.0),
                                 _record("caddy", 9000, 90, connections=500, p99=caddy_p99)])
    def verdict(caddy_p99):
        return {t.measure: t.results["myproxy"] for t in report.targets(rows(caddy_p99))}[
            "p99 latency at c=500, 100 B"]
    assert verdict(102.5) == ("101.0 ms", True)
    assert verdict(95.0) == ("101.0 ms", False)


def test_myproxy_bench_config_merges_sections():
    config = configs.myproxy(9000, ["http://127.0.0.1:1"], health_check={"interval": "1s"},
                             access_log=False)
    assert config["health_check"] == {"path": configs.HEALTH_PATH, "interval": "1s"}
    assert (config["port"], config["host"], config["access_log"]) == (9000, "127.0.0.1", False)


def test_bench_configs_are_valid_myproxy_configs():
    import yaml

    from app.config import parse
    plain = parse(yaml.safe_dump(configs.myproxy(9000, ["http://127.0.0.1:1"])))
    assert plain.health_check.path == configs.HEALTH_PATH
    idle = parse(yaml.safe_dump(configs.myproxy(9000, ["http://127.0.0.1:1"],
                                                **idle_overrides(10000))))
    assert (idle.limits.max_connections, idle.timeouts.client_idle) == (10200, 3600.0)


def test_machine_busy_time_leaves_out_idle_and_iowait():
    text = "cpu  100 5 50 9000 300 7 8 2 0 0\ncpu0 50 2 25 4500 150 3 4 1 0 0\nintr 1 2\n"
    assert procfs.parse_cpu_busy(text) == 100 + 5 + 50 + 7 + 8 + 2


def test_report_says_how_busy_the_rest_of_the_machine_was():
    records = [{**_record("myproxy", 100, 500), "others_cpu_share": share}
               for share in (0.1, 0.3, 0.2)]
    assert report.disturbance(records) == ("Other processes (not started by the benchmark) "
                                           "used 20% of the machine's CPU during the median run, "
                                           "30% at most.")
    assert "used 20%" in report.render({}, report.summarise(records), records)


def test_the_route_table_contender_is_a_valid_config_whose_requests_reach_the_default_pool():
    import yaml

    from app.config import parse
    from app.lb.routes import build_runtime
    backends = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    config = parse(yaml.safe_dump(configs.myproxy(9000, backends,
                                                  routes=configs.route_table(backends))))
    assert len(config.routes) == configs.ROUTES == 100
    assert {bool(r.hosts) and r.hosts[0].startswith("*.") for r in config.routes} == {True, False}
    table = build_runtime(config, upstream=None).table
    assert table.match("127.0.0.1", "/100b").name == "default"
    assert table.match("svc0.example.com", "/p0/x").name == "r0"


def test_nginx_over_https_serves_the_intermediate_profile_with_the_given_certificate():
    from app.server.certificates import INTERMEDIATE_CIPHERS
    nginx = configs.nginx_balancer("/w", 8443, ["http://127.0.0.1:5001"], tls=("/c.pem", "/k.pem"),
                                   name="nginx-https")
    assert "listen 127.0.0.1:8443 ssl;" in nginx
    assert "ssl_certificate /c.pem;" in nginx and "ssl_certificate_key /k.pem;" in nginx
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in nginx
    assert f"ssl_ciphers {INTERMEDIATE_CIPHERS};" in nginx
    assert "pid /w/nginx-https.pid;" in nginx


def test_wrk_can_ask_for_a_new_connection_per_request():
    command = wrk.command("wrk", "https://127.0.0.1:1/100b", 50, 8, headers=("Connection: close",))
    assert command[-3:] == ["-H", "Connection: close", "https://127.0.0.1:1/100b"]


def test_https_table_compares_with_plain_http_and_with_nginx():
    rows = report.summarise([
        _record("myproxy", 5000, 170), _record("myproxy-https", 4500, 200),
        _record("nginx-https", 20000, 40),
        _record("myproxy-https", 900, 1100, path="/100b new-conn"),
        _record("nginx-https", 3000, 330, path="/100b new-conn"),
    ])
    table = report.https_table(rows)
    assert "| new TLS handshakes a second (Connection: close), c=50 | 900 | 3,000 | 0.30 x |  |" in table
    assert "| 200 vs 170 us | | 1.18 x | <= 1.3 x (met) |" in table
    assert report.https_table(report.summarise([_record("myproxy", 5000, 170)])) == ""


def test_targets_hold_each_gunicorn_way_to_python_wsgi_py():
    rows = report.summarise([
        _record("myproxy", 2000, 200), _record("myproxy-gunicorn", 1900, 240),
        _record("myproxy-gunicorn-gevent", 1500, 340),
        _record("myproxy", 1000, 600, path="/1m"), _record("myproxy-gunicorn", 950, 620, path="/1m"),
        _record("myproxy-gunicorn-gevent", 600, 950, path="/1m"),
    ])
    checked = {t.measure: t.results for t in report.targets(rows)}
    cpu = checked["CPU per request, 100 B, c=50, vs python wsgi.py"]
    assert cpu == {"myproxy": ("1.00 x", None), "myproxy-gunicorn": ("1.20 x", True),
                   "myproxy-gunicorn-gevent": ("1.70 x", False)}
    rate = checked["1 MiB responses, req/s vs python wsgi.py"]
    assert rate["myproxy-gunicorn"] == ("0.95 x", True)
    assert rate["myproxy-gunicorn-gevent"] == ("0.60 x", False)


def test_a_baseline_is_the_tree_of_its_commit(tmp_path):
    """``--baseline REF`` runs python wsgi.py from the files of REF, exported beside the run."""
    import subprocess

    from bench.contenders import ROOT, export_tree
    root = export_tree("HEAD", str(tmp_path / "tree"))
    committed = subprocess.run(["git", "show", "HEAD:wsgi.py"], cwd=ROOT, check=True,
                               capture_output=True, timeout=30).stdout
    assert (tmp_path / "tree" / "wsgi.py").read_bytes() == committed
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD", "app"], cwd=ROOT,
                            check=True, capture_output=True, text=True, timeout=30).stdout.split()
    assert listed and all((tmp_path / "tree" / name).is_file() for name in listed)
    assert root == str(tmp_path / "tree")


def test_the_admin_drill_drains_under_load_with_no_failed_request():
    """bench/admin_drill.py, short: gunicorn with 3 workers, 3 backends, both kinds of client."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "bench/admin_drill.py", "--seconds", "5",
                             "--keepalive", "3", "--oneshot", "2"], cwd=root, capture_output=True,
                            text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed GETs: 0" in result.stdout
    assert "sent from the drain's answer + 1s until ready: 0" in result.stdout
    assert "all answered 200 by it: True" in result.stdout


def test_the_cluster_drill_shares_one_limit_a_drain_and_survives_an_outage():
    """bench/cluster_drill.py, short: python wsgi.py and gunicorn with 2 workers, one Redis."""
    import os
    import shutil
    import subprocess
    import sys
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "bench/cluster_drill.py", "--seconds", "4",
                             "--outage", "2", "--only", "shared,drain,outage"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed requests: 0" in result.stdout
    # Each outage and each recovery logged once, by each process with a link (a gunicorn
    # worker has its own); a machine too busy to answer in time may add an outage of its own.
    import re
    for name, links in (("wsgi", 1), ("gunicorn", 2)):
        down, back = map(int, re.search(rf"{name}: outage lines (\d+), recovery lines (\d+)",
                                        result.stdout).groups())
        assert down == back and down >= links, result.stdout
