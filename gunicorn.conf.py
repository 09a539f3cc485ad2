"""gunicorn settings for ``gunicorn wsgi:application`` (picked up from the working directory).

gunicorn reads this file from its working directory only. Started anywhere else, name it:
``gunicorn --config /opt/myproxy/gunicorn.conf.py wsgi:application`` works from any
directory (this file puts its own directory on ``sys.path`` and makes it gunicorn's
``chdir``; a relative ``$MYPROXY_CONFIG`` still means the directory gunicorn was started
in, and without it the checkout's ``config/config.yaml`` is read). When gunicorn runs
without this file, ``wsgi.py`` refuses to serve (``MARKER`` below is how it knows) rather
than serve on gunicorn's sync worker.

Binds ``$PORT`` when set (PaaS), otherwise the config's host and port; runs
``$WEB_CONCURRENCY`` workers (default 1) of MyProxy's worker class
(``app.server.gunicorn_worker.Worker``: gunicorn's gevent worker serving with
``python wsgi.py``'s connection code; ``-k gevent`` on the command line picks gunicorn's
stock gevent worker instead); gives in-flight requests the config's ``shutdown_timeout``
on SIGTERM. Each worker starts its own background work after the
fork (STACK-FACTS 22, 24): nothing connects or spawns in the master, which imports no
requests or urllib3 (imported before the worker's monkey-patching, they break HTTPS
upstreams: STACK-FACTS 12). For the stock worker, maps the config's limits and client
timeouts onto gunicorn's own settings (app.proxy.admission and
app.server.gunicorn_worker.ServerConnection cover what those cannot); MyProxy's worker
reads them from the config itself.

Signals, handled as under ``python wsgi.py``:

- SIGHUP to the master: every worker re-reads the config file and applies it in place
  (``App.reload_file``), keeping its health state and counters; a file with errors is
  refused and logged by each worker. gunicorn's own SIGHUP (new workers, this file
  re-read) would lose both, and a bad file would stop the master. So this file is read
  once: the settings below (and ``host``, ``port``) need a restart to change.
- SIGTERM: each worker marks the app draining at once (``/_myproxy/health`` answers 503),
  goes on accepting for ``shutdown_delay`` (every response closing its connection), then
  stops accepting, closes idle keep-alive connections, and lets in-flight requests finish;
  ``graceful_timeout`` is ``shutdown_delay + shutdown_timeout``
  (``app/server/gunicorn_worker.py``).
- SIGINT, SIGQUIT: gunicorn's quick stop (no delay, no drain).

With ``tls:`` in the config, the port speaks HTTPS: ``certfile``/``keyfile`` tell gunicorn
so, and the ``ssl_context`` hook hands it MyProxy's own TLS side (``app.server.tls``).

The workers keep one view of the backends (one health checker, shared ejections, one
retry budget, the admin API's drains and weights, /status for the group: ``app.lb.shared``,
``app.lb.overrides``) through files in
``$MYPROXY_GROUP_DIR``, a fresh temporary directory removed at exit unless you set one.

Metrics add up across workers: every worker writes its counters to files in
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode; a fresh temporary
directory, removed at exit, unless you set one), and a scrape of any worker reads them all.
The variable must be set before anything imports prometheus_client, so it comes first.
"""
import glob
import math
import os
import shutil
import signal
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)      # started elsewhere with --config: ``app`` is found
chdir = _HERE                      # and the workers import ``wsgi`` from here
MARKER = "MYPROXY_GUNICORN_CONF"   # read by wsgi.py in each worker: these settings are in force
os.environ[MARKER] = os.path.abspath(__file__)
if os.environ.get("MYPROXY_CONFIG"):
    # The same file for the master (here, in the directory gunicorn was started in) and
    # the workers (in ``chdir``).
    os.environ["MYPROXY_CONFIG"] = os.path.abspath(os.environ["MYPROXY_CONFIG"])
else:
    os.environ["MYPROXY_CONFIG"] = os.path.join(_HERE, "config", "config.yaml")

_OWNED = "MYPROXY_METRICS_DIR_OWNED"       # the directory below is ours to remove
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_OWNED] = tempfile.mkdtemp(
        prefix="myproxy-metrics-")
# The workers' shared view of the backends (app.lb.shared, app.server.group): one
# directory per master, made here before the fork, removed at exit.
_GROUP_OWNED = "MYPROXY_GROUP_DIR_OWNED"
if not os.environ.get("MYPROXY_GROUP_DIR"):
    os.environ["MYPROXY_GROUP_DIR"] = os.environ[_GROUP_OWNED] = tempfile.mkdtemp(
        prefix="myproxy-group-")

from app.config import ConfigError, load  # noqa: E402
from app.server.gunicorn_worker import quiet_logger_class  # noqa: E402

try:
    _config = load()
    if _config.tls is not None:          # a certificate it cannot serve stops it here, exit 1
        from app.server.certificates import check_files
        check_files(_config)
except ConfigError as _error:
    print(f"myproxy: config error: {_error}", file=sys.stderr)
    for _owned in (_OWNED, _GROUP_OWNED):
        if os.environ.get(_owned):
            shutil.rmtree(os.environ[_owned], ignore_errors=True)   # no on_exit hook will run
    sys.exit(1)

bind = [f"{_config.host}:{_config.port}"]          # the config's port is $PORT when set
worker_class = "app.server.gunicorn_worker.Worker"   # `-k gevent` on the command line: the stock worker
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = _config.limits.max_connections
# The master sends SIGKILL graceful_timeout after its SIGTERM: it must cover the delay
# (during which a worker goes on accepting) and the drain after it.
graceful_timeout = max(1, math.ceil(_config.shutdown_delay + _config.shutdown_timeout))
# gunicorn times the wait for a request and the reading of its head with one timer, so it
# gets the shorter of the two: slow headers are cut at client_header, idle connections
# possibly before client_idle.
keepalive = max(1, math.ceil(min(_config.timeouts.client_idle, _config.timeouts.client_header)))

# The request limits in gunicorn's terms; app.admission covers the rest (the total head
# size, a missing Host, a Transfer-Encoding other than a single chunked).
limit_request_line = max(1, min(8190, _config.limits.max_header_bytes))   # longer: 414
limit_request_fields = 100                                                # more lines: 431
limit_request_field_size = max(1, _config.limits.max_header_bytes)        # longer line: 431
# Which X-Forwarded-* to believe is forwarded.trusted_proxies' call, in the app: gunicorn
# must not set the scheme or the script name from a client's headers.
forwarded_allow_ips = ""
secure_scheme_headers = {}
accesslog = None          # the app writes its own access log
# gunicorn 25.1+ opens a control socket for gunicornc at one fixed path per user
# ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl): a second master of the same
# user (another MyProxy, a blue-green deploy, the tests) takes it from the first. MyProxy
# is driven by signals (HUP, TERM) and its admin API, so there is none.
control_socket_disable = True
if _config.tls is not None:
    # gunicorn serves TLS when these are set; the context is MyProxy's (``ssl_context``
    # below), so only their existence is gunicorn's to check. The handshake is done, with
    # its timeout, inside that context's wrap_socket: gunicorn must not start another.
    certfile = _config.tls.certificates[0].cert
    keyfile = _config.tls.certificates[0].key
    do_handshake_on_connect = True
    if _config.tls.redirect_from:   # plain HTTP, answered 308 to https (app.middleware.redirect)
        bind.append(f"{_config.host}:{_config.tls.redirect_from}")


errorlog = "-"


def ssl_context(config, default_ssl_context_factory):
    """In each worker, as it starts serving TLS: the TLS side of the worker's app
    (``app.server.tls.Terminator``: SNI over the certificates in force, reloaded on
    SIGHUP with the config, plain HTTP answered 400, the handshake bounded by
    ``timeouts.client_header``; gevent's server calls its ``wrap_socket`` only); or,
    with gunicorn's own ``--certfile``/``--keyfile`` and no ``tls`` in the config,
    gunicorn's context."""
    import wsgi      # the module gunicorn loaded this worker's app from (wsgi:application)
    tls = wsgi.application.tls
    return tls if tls is not None else default_ssl_context_factory()


logger_class = quiet_logger_class()


def on_starting(server):
    """In the master: a worker class that cannot serve MyProxy, or an address that cannot
    be bound, stops it here with one line and exit 1 (``app.server.gunicorn_master``);
    SIGHUP reloads the config inside each worker instead of replacing them; metrics count
    from zero (what an earlier run left in the directory is cleared)."""
    from app.server.gunicorn_master import listen_problem, worker_problem
    problem = worker_problem(server.worker_class) or listen_problem(server)
    if problem:
        print(f"myproxy: {problem}", file=sys.stderr)
        if server.pidfile is not None:
            server.pidfile.unlink()
        on_exit(server)         # gunicorn will not call it: nothing has started
        sys.exit(1)

    def reload_in_workers():
        server.log.info("Hang up: each worker reloads the MyProxy config (workers are kept)")
        server.kill_workers(signal.SIGHUP)

    server.handle_hup = reload_in_workers
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    group_dir = os.environ["MYPROXY_GROUP_DIR"]
    # A restart forgets admin states (drain, maint: SPEC §9), as it forgets the records.
    for stale in glob.glob(os.path.join(metrics_dir, "*.db")) + glob.glob(
            os.path.join(group_dir, "worker-*.json")) + glob.glob(os.path.join(group_dir, "admin.json")):
        os.remove(stale)
    server.log.info("metrics of all workers add up in %s", metrics_dir)
    from app.check import shutdown_warning
    if shutdown_warning(_config):
        server.log.warning("%s", shutdown_warning(_config))


def child_exit(server, worker):
    """A worker is gone: its gauges stop counting (its counters keep their totals)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics and group directories if they are the temporary ones made above."""
    if os.environ.get(_OWNED) == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(os.environ[_OWNED], ignore_errors=True)
    if os.environ.get(_GROUP_OWNED) == os.environ.get("MYPROXY_GROUP_DIR"):
        shutil.rmtree(os.environ[_GROUP_OWNED], ignore_errors=True)


def post_worker_init(worker):
    """In each worker, after the fork: start background work; SIGHUP reloads, SIGTERM drains."""
    from app.server.gunicorn_worker import start_worker
    start_worker(worker)


def worker_int(worker):
    """SIGINT or SIGQUIT in a worker: a quick stop; say we are draining meanwhile."""
    app = getattr(worker, "wsgi", None)
    if app is not None:
        app.draining = True


def worker_exit(server, worker):
    stop = getattr(getattr(worker, "wsgi", None), "stop", None)
    if stop is not None:
        stop()
