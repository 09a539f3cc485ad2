"""The one state of a graceful shutdown, shared by the app and the servers of a process.

A process is first ``serving``. SIGTERM (or SIGINT) makes it ``closing``: ``/health``
answers 503 and every response from then on says ``Connection: close``, while the server
still accepts and serves for ``shutdown_delay``. Then it is ``stopped``: no longer
accepting, and no further request is read on a kept-alive connection; requests in flight
finish within ``shutdown_timeout``. The phases only go forward.

``App`` owns one ``Shutdown``; ``standalone.Server`` (under ``python wsgi.py`` and
MyProxy's gunicorn worker) and the stock gevent worker's connection tracking read it.
Setting it is flags only: it may be set from a signal handler.
"""
from __future__ import annotations

SERVING, CLOSING, STOPPED = "serving", "closing", "stopped"
_ORDER = (SERVING, CLOSING, STOPPED)


class Shutdown:
    """Where the process is in its shutdown: ``serving``, ``closing`` or ``stopped``.

    ``closing`` and ``stopped`` are plain attributes, read on every request.
    """

    __slots__ = ("phase", "closing", "stopped")

    def __init__(self):
        self.phase = SERVING
        self.closing = False      # from SIGTERM on: /health 503, every response closes
        self.stopped = False      # no longer accepting: read no further request

    def begin(self) -> None:
        """SIGTERM: start closing (a no-op once closing)."""
        self._advance(CLOSING)

    def stop(self) -> None:
        """Stop taking requests (after ``shutdown_delay``)."""
        self._advance(STOPPED)

    def _advance(self, phase: str) -> None:
        if _ORDER.index(phase) > _ORDER.index(self.phase):
            self.phase = phase
            self.closing = True
            self.stopped = phase == STOPPED

    def __repr__(self) -> str:
        return f"<Shutdown {self.phase}>"
