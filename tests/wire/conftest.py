"""Fixtures of the wire tests."""
import pytest
from gevent import socket as gsocket


@pytest.fixture
def pair():
    """Two connected gevent sockets, closed after the test."""
    a, b = gsocket.socketpair()
    yield a, b
    a.close()
    b.close()
