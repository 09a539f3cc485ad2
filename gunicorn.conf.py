"""gunicorn settings for ``gunicorn -k gevent wsgi:application`` (picked up from the working directory).

Binds ``$PORT`` when set (PaaS), otherwise the config's host and port; runs
``$WEB_CONCURRENCY`` gevent workers (default 1); gives in-flight requests the config's
``shutdown_timeout`` on SIGTERM. Each worker starts its own background work after the
fork (STACK-FACTS 22, 24): nothing connects or spawns in the master.
"""
import os
import sys

from app.config import ConfigError, load

try:
    _config = load()
except ConfigError as _error:
    print(f"myproxy: config error: {_error}", file=sys.stderr)
    sys.exit(1)

bind = [f"{_config.host}:{os.environ.get('PORT') or _config.port}"]
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = _config.limits.max_connections
graceful_timeout = max(1, round(_config.shutdown_timeout))
keepalive = int(_config.timeouts.client_idle)
accesslog = None          # the app writes its own access log
errorlog = "-"


def post_worker_init(worker):
    """Start this worker's health checker, after the fork."""
    worker.wsgi.start()


def worker_exit(server, worker):
    stop = getattr(worker.wsgi, "stop", None)
    if stop is not None:
        stop()
