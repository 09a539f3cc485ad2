"""Retries: which failed attempts may be sent again (the budget that caps how many retries
the backends get is the pool's capacity's: ``capacity.RetryBudget``).

- ``may_retry`` is the rule (STACK-FACTS 10): nothing sent (refused, connect timeout)
  means any method may go again; a reset or read timeout after sending means only an
  idempotent method may, and only with its whole body kept (``proxy.body`` keeps it). A
  ``POST`` that reached a backend is never sent twice.

It knows nothing of WSGI or of how backends are chosen.
"""
from __future__ import annotations

from ..errors import UpstreamError, UpstreamReset, UpstreamTimeout

# RFC 9110 §9.2.2: methods whose intended effect is the same however often they are sent.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def may_retry(error: UpstreamError, method: str, replayable: bool) -> bool:
    """Whether an attempt that failed with ``error`` may be sent again; ``replayable``:
    whether the request's whole body can be sent again (``proxy.body.RequestBody``)."""
    if not replayable:
        return False
    if not error.sent:
        return True
    # A stale pooled connection (its bytes were no answer to this request) is sent again
    # on a fresh one, whatever its error looked like.
    return method in IDEMPOTENT_METHODS and (
        isinstance(error, (UpstreamReset, UpstreamTimeout)) or error.stale)
