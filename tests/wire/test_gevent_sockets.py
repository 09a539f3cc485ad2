"""``app.wire.gevent_adapter``: the wait for a reply with a connection's own read deadline."""
import socket
import time

import gevent
import pytest

from app.wire.gevent_adapter import ReadDeadline, wait_readable


def test_a_wait_with_a_deadline_returns_when_bytes_arrive(pair):
    a, b = pair
    a.settimeout(5.0)
    deadline = ReadDeadline(5.0)
    for n in range(3):                       # the same timer, armed again each time
        gevent.spawn_later(0.01, b.sendall, b"x")
        wait_readable(a, deadline)
        assert a.recv(1) == b"x"
        assert not deadline.timer.active     # disarmed once the wait is over
    deadline.close()


def test_a_wait_with_a_deadline_times_out_as_the_socket_would(pair):
    a, _ = pair
    a.settimeout(0.05)
    deadline = ReadDeadline(0.05)
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        wait_readable(a, deadline)
    assert 0.04 <= time.monotonic() - started < 2.0
    assert not deadline.timer.active
    deadline.close()


def test_a_deadline_for_another_timeout_is_not_used(pair):
    """After a reload changed the socket's timeout, the socket's own timeout holds."""
    a, _ = pair
    a.settimeout(0.05)
    deadline = ReadDeadline(30.0)
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        wait_readable(a, deadline)
    assert time.monotonic() - started < 2.0    # the socket's 0.05 s, not the deadline's 30
    assert not deadline.timer.active
    deadline.close()
