"""A round of work done at once, then every ``interval`` seconds in a greenlet: the gunicorn
group's sync (``shared``) and the cluster's exchange with Redis (``cluster``).

A round that raises is logged with its traceback and the next one runs as planned: a
background loop never dies silently. No I/O of its own.
"""
from __future__ import annotations

import logging
from typing import Callable

import gevent


class Rounds:
    """``start()`` runs ``work`` once, then every ``interval`` s; ``stop()`` ends it (safe to
    call twice) and says whether it was running. ``what`` names it in the error line."""

    def __init__(self, work: Callable[[], None], interval: float, what: str,
                 log: logging.Logger):
        self.work = work
        self.interval = interval
        self.what = what
        self.log = log
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self.work()
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> bool:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is None:
            return False
        greenlet.kill(block=True, timeout=1)
        return True

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            try:
                self.work()
            except Exception:  # noqa: BLE001 - a background loop never dies silently
                self.log.exception("%s failed; trying again", self.what)
