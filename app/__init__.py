"""MyProxy: an HTTP/1.1 load balancer as a WSGI application.

``create_app(config)`` is the composition root: it builds every part and wires them, and
starts nothing. The returned ``App`` is the WSGI callable; ``App.start()`` starts its
background work (the health checker) and ``App.stop()`` stops it. Servers call those:
``app.server`` under ``python wsgi.py``, ``gunicorn.conf.py`` in each worker.
"""
from __future__ import annotations

import logging

from .balancer import Backend, Balancer
from .config import Config
from .health import HealthChecker
from .middleware import RequestLog, ServerConnection
from .proxy import Proxy
from .upstream import Upstream, make_session

log = logging.getLogger("myproxy")


class App:
    """The load balancer: a WSGI callable with a start/stop life cycle."""

    def __init__(self, config: Config, balancer: Balancer, upstream: Upstream,
                 health: HealthChecker, wsgi):
        self.config = config
        self.balancer = balancer
        self.upstream = upstream
        self.health = health
        self._wsgi = wsgi
        self.draining = False

    def __call__(self, environ, start_response):
        return self._wsgi(environ, start_response)

    def start(self) -> None:
        """Start background work; call once per process, after any fork."""
        self.health.start()

    def stop(self) -> None:
        """Stop background work and close upstream connections; safe to call twice."""
        self.health.stop()
        self.upstream.close()


def create_app(config: Config, session=None) -> App:
    """Build the load balancer described by ``config``. Starts nothing."""
    backends = [Backend(backend, probed=config.health_check.enabled) for backend in config.backends]
    balancer = Balancer(backends, config.policy, slow_start=config.slow_start)
    pools = max(16, 2 * len(backends))
    upstream = Upstream(config.timeouts, session or make_session(pools=pools))
    health = HealthChecker(balancer, config.health_check, upstream)
    proxy = Proxy(config, balancer, upstream)
    wsgi = ServerConnection(RequestLog(proxy, forwarded=config.forwarded,
                                       enabled=config.access_log),
                            send_timeout=config.timeouts.client_idle)
    return App(config, balancer, upstream, health, wsgi)
