"""The standard library's ``logging`` internals, in one place: for Python 3.11 (the
Dockerfile's and the virtualenv's), pinned by ``tests/test_logging_adapter.py``.

Relied on:

- ``logging._srcfile``: when it is None, ``Logger._log`` skips ``findCaller`` (a walk up
  the stack on every record) and each record says ``(unknown file)``, line 0,
  ``(unknown function)``. The logging HOWTO's "Optimization" section documents setting it.

Its own module rather than a function in ``app.logs``, so that every private name of
another library lives in a module named ``*_adapter``, with a test of the same name.
"""
from __future__ import annotations

import logging


def skip_caller_lookup() -> None:
    """Stop looking up each log record's file, line and function (no format here shows
    them), for every logger in the process."""
    logging._srcfile = None
