"""What gunicorn's master checks before it forks (``gunicorn.conf.py``'s ``on_starting``):
the refusals that must be one line and an exit, not a worker that serves badly or five
seconds of gunicorn's retries.

- ``worker_problem``: a worker class that is neither MyProxy's nor a gevent worker (``-k
  sync`` on the command line, say) would serve without health checks (no greenlets), the
  sync one a request at a time, with gunicorn's 30 s ``timeout`` killing long requests;
- ``listen_problem``: an address gunicorn could not bind (a port in use, an address not
  on this machine), said as ``python wsgi.py`` says it (``app.errors.ListenError``).

Runs in the master, which must not import requests or urllib3 (STACK-FACTS 12): this
imports only the standard library, gunicorn (through ``gunicorn_adapter``, on call) and
``app.errors``.
"""
from __future__ import annotations

import socket

from ..errors import ListenError

RUN_AS = ("run it as `gunicorn wsgi:application` (MyProxy's worker, set in gunicorn.conf.py) "
          "or `gunicorn -k gevent wsgi:application`")


def worker_problem(worker_class: type) -> str | None:
    """Why ``worker_class`` cannot serve MyProxy, or None when it can (a gevent worker)."""
    from .gunicorn_adapter import GeventWorker
    if issubclass(worker_class, GeventWorker):
        return None
    return (f"gunicorn's {worker_class.__module__}.{worker_class.__name__} worker cannot "
            f"serve MyProxy, which needs a gevent worker (its health checks, tunnels and "
            f"drain are greenlets): {RUN_AS}")


def listen_problem(server) -> str | None:
    """The first of the arbiter ``server``'s addresses that cannot be bound, as a
    ``ListenError`` message; None when all can, or when the sockets are not the master's
    to make (inherited from systemd or an old master on USR2, or bound by each worker
    with ``reuse_port``)."""
    from .gunicorn_adapter import inherits_sockets
    if inherits_sockets(server) or server.cfg.reuse_port:
        return None
    for address in server.cfg.address:
        if not isinstance(address, tuple):
            continue            # a UNIX socket path: gunicorn's to say
        host, port = address[:2]
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                        flags=socket.AI_PASSIVE)[0][0]
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError as error:
            return str(ListenError(host, port, error))
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gunicorn binds
            probe.bind(address)
        except OSError as error:
            return str(ListenError(host, port, error))
        finally:
            probe.close()
    return None
