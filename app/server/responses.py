"""What a WSGI response owes the server that sends it, for every wrapper of one.

It knows nothing of proxying; both servers and every middleware may import it.
"""
from __future__ import annotations


def close_body(body) -> None:
    """Close a WSGI response iterable, as PEP 3333 requires of whoever wraps it."""
    close = getattr(body, "close", None)
    if close is not None:
        close()
