"""Metrics: the Prometheus registry of one app, and the hooks the proxy and health checks feed.

Owns the metric families of SPEC §5 (all ``myproxy_``, labelled by the route's name and
the backend URL as written in the config: both come from the file, never from a request,
so the label sets stay bounded) in a ``CollectorRegistry`` of its own, so that several apps in one
process (tests) never share counters, and the recent-traffic windows the status page
reads (``recent.Traffic``, one per route and backend). The hooks:

- ``observe(route, backend, status, seconds, tried, error_kind)``: one finished request,
  called by the request-log middleware with the proxy's ``myproxy.tried`` (a ``(url,
  failure)`` pair per attempt); backend ``"none"`` when no backend was chosen, route
  ``"-"`` when no route matched;
- ``client_aborted(route, backend)``: a request whose client left while its backend answered;
- each pool's ``Capacity.waited(seconds)`` and ``Capacity.rejected(reason)``: a request's
  wait in the queue, and a 503 of the queue (set by ``prepare``);
- ``sticky(route, result)``: what a pool's sticky cookie did (``hit``, ``new``, ``rebalanced``);
- ``rate_limited(route)``: a request refused by its route's rate limit (429);
- ``health_checked(route, backend, result)``: one health check, the pools' ``on_check``;
- ``config_reloaded(result)``: one reload, ``success`` or ``failure``;
- ``admin_changed(action)``: one change through the admin API (``ADMIN_ACTIONS``);
- ``tls_refused(reason)``: a connection to the TLS port that never got to HTTPS.

Gauges (``up``, ``in_flight``, ``max_conns``, each route's queue depth) are read from the ``Backend`` objects of the runtime in
force (``RuntimeHolder``), which own that state, when scraped, so they cost nothing per
request; so are each TLS certificate's time left and whether it is valid now
(``certificate_expiry``, from ``app.server.tls``), by name, and the open client connections (``count_connections``, a
count the server running the app hands in). Also exposed: the process's own ``process_*``
metrics (prometheus_client's ``ProcessCollector``: memory, CPU, open descriptors) and
``myproxy_build_info{version,python}``.

What a scrape shows: no ``*_created`` series (prometheus_client's
``disable_created_metrics``: a counter's creation time is noise to every scraper but
OpenMetrics' own), and no family without a sample (a labelled counter nothing has
happened to yet, a TLS gauge without TLS): it appears with its first sample.

Several gunicorn workers add up through prometheus_client's multiprocess mode:
``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before anything imports
prometheus_client; each worker then writes its values to files there, and a scrape in any
worker reads them all. In that mode a small greenlet copies the gauges to the files every
``GAUGE_REFRESH`` seconds, since the scraping worker cannot read another's ``Backend``.
The client connections add up over the live workers; the ``process_*`` metrics are each
live worker's own, with a ``pid`` label (gauges, ``process_cpu_seconds_total`` too, as the
files hold gauges per process).
It knows nothing of WSGI or HTTP beyond a status code.
"""
from __future__ import annotations

import logging
import platform
import time
from typing import Callable

import gevent
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               disable_created_metrics)
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..config import NO_ROUTE
from ..lb.balancer import Backend, CheckResult
from .recent import Traffic

log = logging.getLogger("myproxy.metrics")

NO_BACKEND = "none"          # the backend label of requests no backend was chosen for
# Request durations: a proxy's answers range from sub-millisecond to its read timeout.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
GAUGE_REFRESH = 1.0          # seconds between gauge copies in multiprocess mode
# What the admin API changes (app.middleware.api): a backend's admin state, its run-time
# weight, or the config (a reload).
ADMIN_ACTIONS = ("ready", "drain", "maint", "weight", "reload")


class _Series:
    """The label children of one route's backend, made once so a request costs dict lookups only."""

    __slots__ = ("route", "url", "codes", "duration", "retries", "errors", "traffic")

    def __init__(self, metrics: "Metrics", route: str, url: str):
        self.route, self.url = route, url
        self.codes: dict[int, object] = {}
        self.duration = metrics.request_duration.labels(route, url)
        # A request with no backend is never retried on it: no series that is always 0.
        self.retries = metrics.retries.labels(route, url) if url != NO_BACKEND else None
        self.errors: dict[str, object] = {}
        self.traffic = Traffic(metrics.clock)


class Metrics:
    """The registry and hooks of one app (see the module docstring)."""

    def __init__(self, live, multiprocess_dir: str | None = None,
                 clock: Callable[[], float] = time.time,
                 certificate_expiry: Callable[[], dict[str, tuple[float, float]]] | None = None):
        self.live = live      # the RuntimeHolder: its pools' backends feed the gauges
        # TLS name -> (not-before, not-after), Unix time
        self.certificate_expiry = certificate_expiry
        self.multiprocess = bool(multiprocess_dir)
        self.clock = clock
        disable_created_metrics()   # process-wide, and the same for every app: no *_created
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("myproxy_requests_total", "Requests answered, by backend and status code.",
                                ["route", "backend", "code"], registry=r)
        self.request_duration = Histogram(
            "myproxy_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response, by backend.",
            ["route", "backend"], buckets=DURATION_BUCKETS, registry=r)
        self.up = Gauge("myproxy_backend_up", "1 while the backend is up: passing its health checks "
                        "and not ejected for failed requests.",
                        ["route", "backend"], registry=r, multiprocess_mode="livemin")
        self.in_flight = Gauge("myproxy_backend_in_flight", "Requests sent to the backend and not finished.",
                               ["route", "backend"], registry=r, multiprocess_mode="livesum")
        self.retries = Counter("myproxy_retries_total",
                               "Requests retried on this backend after another attempt failed.",
                               ["route", "backend"], registry=r)
        self.client_aborts = Counter("myproxy_client_aborts_total",
                                     "Requests whose client closed its connection while the "
                                     "backend was still answering, by backend.",
                                     ["route", "backend"], registry=r)
        self.sticky_results = Counter("myproxy_sticky_total",
                                      "Requests of a pool with a sticky cookie, by what the "
                                      "cookie did: hit (its backend took the request), new (no "
                                      "valid cookie: balanced, cookie set), rebalanced (its "
                                      "backend could not take it or failed: cookie replaced).",
                                      ["route", "result"], registry=r)
        self._sticky: dict[tuple[str, str], object] = {}
        self.rate_limits = Counter("myproxy_rate_limited_total",
                                   "Requests refused with 429 by the route's rate limit.",
                                   ["route"], registry=r)
        self.upstream_errors = Counter("myproxy_upstream_errors_total",
                                       "Failed upstream requests, by backend and kind of failure.",
                                       ["route", "backend", "kind"], registry=r)
        self.health_checks = Counter("myproxy_health_checks_total",
                                     "Active health checks, by backend and result (pass or fail).",
                                     ["route", "backend", "result"], registry=r)
        self.config_reloads = Counter("myproxy_config_reloads_total",
                                      "Configuration reloads, by result (success or failure).",
                                      ["result"], registry=r)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.admin_changes = Counter("myproxy_admin_changes_total",
                                     "Changes made through the admin API, by action: ready, "
                                     "drain, maint (a backend's admin state), weight, reload.",
                                     ["action"], registry=r)
        for action in ADMIN_ACTIONS:
            self.admin_changes.labels(action)
        self.tls_expiry = Gauge("myproxy_tls_certificate_expiry_seconds",
                                "Seconds until the TLS certificate serving this name expires.",
                                ["name"], registry=r, multiprocess_mode="livemin")
        self.tls_valid = Gauge("myproxy_tls_certificate_valid",
                               "1 while the TLS certificate serving this name is within its "
                               "validity; 0 when clients refuse it (expired, not yet valid).",
                               ["name"], registry=r, multiprocess_mode="livemin")
        self._tls_names: set[str] = set()
        self.tls_refusals = None
        if certificate_expiry is not None:
            from ..server.tls import REFUSALS
            self.tls_refusals = Counter(
                "myproxy_tls_handshake_failures_total",
                "Connections to the TLS port that never got to HTTPS, by reason: plain_http, "
                "not_tls, timeout (no handshake within timeouts.client_header), alpn (no protocol "
                "we serve offered), failed.",
                ["reason"], registry=r)
            for reason in REFUSALS:
                self.tls_refusals.labels(reason)
        # max_conns and the queue (SPEC §8): the depth and the caps are read when scraped.
        self.backend_max_conns = Gauge("myproxy_backend_max_conns",
                                       "The backend's max_conns: requests in flight to it at "
                                       "most, for the whole group; 0 = no cap.",
                                       ["route", "backend"], registry=r, multiprocess_mode="livemax")
        self.queue_depth = Gauge("myproxy_queue_depth", "Requests waiting in the route's queue "
                                 "for a backend's slot (max_conns).", ["route"], registry=r,
                                 multiprocess_mode="livesum")
        self.queue_wait = Histogram("myproxy_queue_wait_seconds", "Time a request waited in "
                                    "the route's queue, whether it got a slot or not.", ["route"],
                                    buckets=DURATION_BUCKETS, registry=r)
        self.queue_rejected = Counter("myproxy_queue_rejected_total", "Requests answered 503 "
                                      "because every backend was at max_conns: the queue was "
                                      "full, the wait passed queue.timeout, or the proxy was "
                                      "shutting down.", ["route", "reason"], registry=r)
        self.client_connections = Gauge("myproxy_client_connections",
                                         "Client connections open now (the sum over the "
                                         "workers).", registry=r, multiprocess_mode="livesum")
        self._count_connections: Callable[[], int] | None = None
        Gauge("myproxy_build_info", "Always 1: the MyProxy version and the Python running it.",
              ["version", "python"], registry=r, multiprocess_mode="livemax").labels(
            __version__, platform.python_version()).set(1)
        self._series: dict[tuple[str, str], _Series] = {}
        self._gauged: set[tuple[str, str]] = set()
        self._exposed = self.registry
        self._process_gauges: dict[str, Gauge] | None = None
        self._cluster_up: Gauge | None = None      # made by the first cluster_up: absent without
        if self.multiprocess:
            from prometheus_client import multiprocess, values
            if values.ValueClass is values.MutexValue:
                raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client "
                                   "is first imported (gunicorn.conf.py does it first thing)")
            self._exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._exposed, path=multiprocess_dir)
            # Each worker's process_* as gauges of its own, which the files then show
            # with a `pid` label (made at the first refresh, by what /proc gives).
            self._process = ProcessCollector(registry=None)
            self._process_gauges = {}
        else:
            ProcessCollector(registry=r)
        self._refresher: gevent.Greenlet | None = None

    # --- hooks ---------------------------------------------------------------------------

    def prepare(self, runtime) -> None:
        """Make the series of every pool's backends, so each is exposed from the start."""
        for pool in runtime.pools:
            capacity, name = pool.capacity, pool.name
            capacity.waited = self.queue_wait.labels(name).observe
            capacity.rejected = lambda reason, name=name: self.queue_rejected.labels(
                name, reason).inc()
            for backend in pool.backends:
                self.series(pool.name, backend.url)
                for result in ("pass", "fail"):
                    self.health_checks.labels(pool.name, backend.url, result)

    def series(self, route: str, url: str) -> _Series:
        series = self._series.get((route, url))
        if series is None:
            series = self._series[(route, url)] = _Series(self, route, url)
        return series

    def client_aborted(self, route: str | None, backend: str | None) -> None:
        """Count a request abandoned because its client left (also observed, as 499)."""
        self.client_aborts.labels(route or NO_ROUTE, backend or NO_BACKEND).inc()

    def sticky(self, route: str, result: str) -> None:
        """Count what a pool's sticky cookie did for one request (``app.lb.sticky``)."""
        counter = self._sticky.get((route, result))
        if counter is None:
            counter = self._sticky[(route, result)] = self.sticky_results.labels(route, result)
        counter.inc()
    def rate_limited(self, route: str) -> None:
        self.rate_limits.labels(route).inc()

    def observe(self, route: str | None, backend: str | None, status: int,
                seconds: float | None, tried=(), error_kind: str | None = None) -> None:
        """Count one finished request (called once per request, on the hot path).

        ``seconds`` is None for a tunnel (an upgraded connection): counted, but its life
        is not a request's latency.

        ``tried`` has a ``(url, failure)`` pair per attempt (failure: an error kind,
        ``"stale"`` for a keep-alive reconnect, None for the answer); ``error_kind`` is the
        upstream failure the request ended with, which may have come after the answer
        began (mid-body).
        """
        route = route or NO_ROUTE
        backend = backend or NO_BACKEND
        series = self._series.get((route, backend)) or self.series(route, backend)
        counter = series.codes.get(status)
        if counter is None:
            counter = series.codes[status] = self.requests.labels(route, backend, str(status))
        counter.inc()
        if seconds is not None:
            series.duration.observe(seconds)
        series.traffic.record(status, seconds)
        if len(tried) > 1 or error_kind is not None:
            self._attempts(route, tried, error_kind)

    def _attempts(self, route: str, tried, error_kind: str | None) -> None:
        """Upstream errors and retries, each on the backend it happened to (of the route)."""
        previous = None
        for url, failure in tried:
            series = self._series.get((route, url)) or self.series(route, url)
            if previous is not None and previous != "stale":
                series.retries.inc()
            if failure is not None and failure != "stale":
                self._upstream_error(series, failure)
            previous = failure
        if error_kind is not None and tried and tried[-1][1] is None:
            url = tried[-1][0]
            self._upstream_error(self._series.get((route, url)) or self.series(route, url),
                                 error_kind, answered=True)

    def _upstream_error(self, series: _Series, kind: str, answered: bool = False) -> None:
        errors = series.errors.get(kind)
        if errors is None:
            errors = series.errors[kind] = self.upstream_errors.labels(series.route, series.url,
                                                                       kind)
        errors.inc()
        series.traffic.upstream_error(kind, answered)

    def count_connections(self, count: Callable[[], int]) -> None:
        """Read the open client connections from ``count`` (the server running the app)."""
        self._count_connections = count

    def health_checked(self, route: str, backend: Backend, result: CheckResult) -> None:
        """Count one active health check of a pool's backend (the pools' ``on_check``)."""
        self.health_checks.labels(route, backend.url, "pass" if result.ok else "fail").inc()

    def config_reloaded(self, result: str) -> None:
        self.config_reloads.labels(result).inc()

    def admin_changed(self, action: str) -> None:
        self.admin_changes.labels(action).inc()

    def cluster_up(self, up: bool) -> None:
        """The cluster's Redis answers (1) or not (0): ``app.lb.cluster.Cluster.on_up``."""
        if self._cluster_up is None:
            self._cluster_up = Gauge("myproxy_cluster_up", "1 while the cluster's Redis answers "
                                     "(rate limits, admin states, ejections shared); 0: each "
                                     "instance on its own.", registry=self.registry,
                                     multiprocess_mode="livemin")
        self._cluster_up.set(1 if up else 0)

    def tls_refused(self, reason: str) -> None:
        """A connection to the TLS port that never got to HTTPS (``Terminator.on_refused``)."""
        if self.tls_refusals is not None:
            self.tls_refusals.labels(reason).inc()

    def forget(self, route: str, url: str) -> None:
        """Drop a removed backend's series (a member DNS took away), so that the ``backend``
        label has one value per backend that exists, not one per address ever seen. (In
        multiprocess mode the other workers' files keep theirs until a restart.)"""
        series = self._series.pop((route, url), None)
        if self.multiprocess:
            return      # prometheus_client cannot remove a label set from the shared files
        labels = (route, url)
        removals = [(self.request_duration, *labels), (self.retries, *labels),
                    (self.client_aborts, *labels),
                    (self.health_checks, *labels, "pass"), (self.health_checks, *labels, "fail")]
        if series is not None:
            removals += [(self.requests, *labels, str(code)) for code in series.codes]
            removals += [(self.upstream_errors, *labels, kind) for kind in series.errors]
        for family, *names in removals:
            try:
                family.remove(*names)
            except KeyError:
                pass

    def traffic(self, route: str, url: str) -> Traffic:
        return self.series(route, url).traffic

    def seen(self, route: str, url: str) -> Traffic | None:
        """The traffic of a series that has had requests, else None (nothing is made)."""
        series = self._series.get((route, url))
        return series.traffic if series is not None else None

    # --- exposition ----------------------------------------------------------------------

    def refresh_gauges(self) -> None:
        """Copy each backend's health and in-flight count into the gauges; drop removed backends."""
        current = set()
        for pool in self.live.runtime.pools:
            self.queue_depth.labels(pool.name).set(pool.capacity.local_depth)
            for backend in [*pool.backends, *pool.balancer.leaving]:
                labels = (pool.name, backend.url)
                current.add(labels)
                self.up.labels(*labels).set(1 if backend.state == "up" else 0)
                self.in_flight.labels(*labels).set(backend.in_flight)
                self.backend_max_conns.labels(*labels).set(backend.config.max_conns)
        for labels in self._gauged - current:
            for gauge in (self.up, self.in_flight, self.backend_max_conns):
                if self.multiprocess:
                    # prometheus_client cannot remove a label set from the shared files:
                    # a removed backend reads as down with nothing in flight.
                    gauge.labels(*labels).set(0)
                    continue
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        self._gauged = current
        if self._count_connections is not None:
            self.client_connections.set(self._count_connections())
        if self._process_gauges is not None:
            self._refresh_process()
        if self.certificate_expiry is not None:
            now = self.clock()
            expiry = self.certificate_expiry()
            for name, (not_before, not_after) in expiry.items():
                self.tls_expiry.labels(name).set(round(not_after - now))
                self.tls_valid.labels(name).set(int(not_before <= now < not_after))
            for name in self._tls_names - set(expiry):
                for gauge in (self.tls_expiry, self.tls_valid):
                    try:
                        gauge.remove(name)
                    except KeyError:
                        pass
            self._tls_names = set(expiry)

    def _refresh_process(self) -> None:
        """Copy this worker's ``process_*`` values into its per-process gauges."""
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._process_gauges.get(sample.name)
                if gauge is None:
                    gauge = self._process_gauges[sample.name] = Gauge(
                        sample.name, family.documentation, registry=self.registry,
                        multiprocess_mode="liveall")
                gauge.set(sample.value)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The Prometheus text (or OpenMetrics, if ``accept`` asks for it) and its content type."""
        self.refresh_gauges()
        encoder, content_type = choose_encoder(accept)
        return encoder(_WithSamples(self._exposed)), content_type

    def start(self) -> None:
        """In multiprocess mode, keep this worker's gauges current for scrapes by other workers."""
        if self.multiprocess and self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_loop)

    def stop(self) -> None:
        greenlet, self._refresher = self._refresher, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=1)

    def _refresh_loop(self) -> None:
        while True:
            try:
                self.refresh_gauges()
            except Exception:  # noqa: BLE001 - a background loop never dies silently
                log.exception("refreshing the gauges failed; retrying")
            gevent.sleep(GAUGE_REFRESH)


class _WithSamples:
    """A registry as a scrape shows it: the families that have a sample, and only those."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        return (family for family in self.registry.collect() if family.samples)
