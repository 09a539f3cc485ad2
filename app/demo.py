"""Demo backends for ``python wsgi.py --demo``: tiny servers that answer with their name.

They let a new user see round-robin at once (``curl localhost:8080``) with nothing else
running. Only backends on this machine (``localhost``, ``127.0.0.1``) are started.
``python wsgi.py --demo-backend PORT`` runs one on its own (the docker-compose example).
"""
from __future__ import annotations

import logging
import signal
from urllib.parse import urlsplit

import gevent
from gevent.event import Event

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


def start_demo_backends(urls) -> list[Server]:
    """Start one demo server per local backend URL; return them (call ``stop`` on each)."""
    servers = []
    for index, url in enumerate(urls, start=1):
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS or not parts.port:
            log.info("demo: not starting %s (only local http backends with a port)", url)
            continue
        server = Server(("127.0.0.1", parts.port), demo_app(f"backend {index} (port {parts.port})"),
                        max_connections=1000)
        server.start()
        servers.append(server)
        log.info("demo backend %d listening on http://127.0.0.1:%d", index, parts.port)
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
