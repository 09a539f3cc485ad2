"""Demo backends for ``python wsgi.py --demo``: tiny servers that answer with their name.

They let a new user see round-robin at once (``curl localhost:8080``) with nothing else
running, and with routes (``config/routes.example.yaml``) which service answers what: a
route's demo backends name the route. Only backends on this machine (``localhost``,
``127.0.0.1``) are started, one per port.
``python wsgi.py --demo-backend PORT`` runs one on its own (the docker-compose example).
"""
from __future__ import annotations

import logging
import signal
from urllib.parse import urlsplit

import gevent
from gevent.event import Event

from .config import DEFAULT_ROUTE
from .server.standalone import Server

log = logging.getLogger("myproxy.demo")

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def demo_app(name: str):
    """A WSGI app answering every request with a line naming the backend."""
    def app(environ, start_response):
        body = (f"Hello from {name} ({environ['REQUEST_METHOD']} "
                f"{environ.get('RAW_URI') or environ.get('PATH_INFO', '/')})\n").encode()
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return app


def start_demo_backends(config) -> list[Server]:
    """Start one demo server per local backend port of every pool of ``config``; return
    them (call ``stop`` on each). A port in two pools is served once, named by the first."""
    servers, ports = [], set()
    for pool in config.pools:
        label = "" if pool.name == DEFAULT_ROUTE else f"{pool.name} "
        for index, backend in enumerate(pool.backends, start=1):
            parts = urlsplit(backend.url)
            if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS or not parts.port:
                log.info("demo: not starting %s (only local http backends with a port)", backend.url)
                continue
            if parts.port in ports:
                continue
            ports.add(parts.port)
            name = f"{label}backend {index} (port {parts.port})"
            server = Server(("127.0.0.1", parts.port), demo_app(name), max_connections=1000)
            server.start()
            servers.append(server)
            log.info("demo %s listening on http://127.0.0.1:%d", name, parts.port)
    return servers


def serve_demo_backend(port: int, host: str = "0.0.0.0") -> int:
    """Serve one demo backend until SIGTERM or SIGINT; return the exit code (0)."""
    server = Server((host, port), demo_app(f"backend (port {port})"), max_connections=1000)
    server.start()
    log.info("demo backend listening on http://%s:%d", host, server.server_port)
    stop = Event()
    handlers = [gevent.signal_handler(signum, stop.set) for signum in (signal.SIGTERM, signal.SIGINT)]
    try:
        stop.wait()
        server.drain(5)
    finally:
        for handler in handlers:
            handler.cancel()
    return 0
