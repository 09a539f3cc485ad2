"""Retry rules, the replay buffer and the retry budget: plain asserts, no I/O."""
import io

import pytest

from app.errors import (UpstreamConnectError, UpstreamConnectTimeout, UpstreamProtocolError,
                        UpstreamReset, UpstreamTimeout)
from app.lb.retry import REPLAY_LIMIT, ReplayableBody, RetryBudget, may_retry


def sent(body):
    """Send one attempt of ``body`` to the end; return the bytes."""
    return b"".join(body.attempt() or [])


@pytest.mark.parametrize("error,method,expected", [
    (UpstreamConnectError("refused"), "POST", True),
    (UpstreamConnectTimeout("slow"), "PATCH", True),
    (UpstreamReset("reset"), "GET", True),
    (UpstreamReset("reset"), "PUT", True),
    (UpstreamReset("reset"), "DELETE", True),
    (UpstreamTimeout("read"), "HEAD", True),
    (UpstreamReset("reset"), "POST", False),
    (UpstreamTimeout("read"), "POST", False),
    (UpstreamTimeout("read"), "PATCH", False),
    (UpstreamProtocolError("garbage"), "GET", False),
], ids=lambda value: value if isinstance(value, str) else type(value).__name__)
def test_which_failures_may_be_retried(error, method, expected):
    assert may_retry(error, method, ReplayableBody()) is expected


def test_a_small_body_is_kept_and_replayed_whole():
    body = ReplayableBody(io.BytesIO(b"a" * 100_000), limit=150_000)
    first = body.attempt()
    assert next(first) == b"a" * 65536                 # cut off mid-body
    assert body.replayable
    assert sent(body) == b"a" * 100_000
    assert sent(body) == b"a" * 100_000


def test_a_body_over_the_limit_streams_and_is_not_kept():
    body = ReplayableBody(iter([b"x" * 40_000, b"y" * 40_000]))
    assert sent(body) == b"x" * 40_000 + b"y" * 40_000
    assert not body.replayable
    assert not may_retry(UpstreamReset("reset"), "PUT", body)
    with pytest.raises(RuntimeError):
        body.attempt()


def test_an_unread_body_of_any_size_can_still_go_elsewhere():
    body = ReplayableBody(io.BytesIO(b"z" * (3 * REPLAY_LIMIT)))
    body.attempt()                     # a connect failure: the attempt never read it
    assert body.replayable and may_retry(UpstreamConnectError("refused"), "POST", body)
    assert sent(body) == b"z" * (3 * REPLAY_LIMIT)


def test_no_body_is_none_every_time():
    body = ReplayableBody(None)
    assert body.attempt() is None and body.attempt() is None and body.replayable


def test_the_chunked_flag_is_kept():
    assert ReplayableBody(iter([b"a"]), True).chunked


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_budget_allows_its_floor_with_no_requests_at_all():
    budget = RetryBudget(0.2, floor=3, clock=Clock())
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


def test_the_budget_grows_with_the_share_of_recent_requests():
    budget = RetryBudget(0.2, floor=0, clock=Clock())
    for _ in range(50):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(20)) == 10


def test_the_budget_forgets_requests_and_retries_older_than_its_window():
    clock = Clock()
    budget = RetryBudget(0.5, window=10, floor=0, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(10)) == 5
    clock.now += 5
    assert not budget.try_spend()
    clock.now += 6
    assert not budget.try_spend()            # the requests are forgotten too
    budget.record_request()
    budget.record_request()
    assert budget.try_spend() and not budget.try_spend()


def test_a_client_that_fails_mid_body_makes_the_body_unreplayable():
    def pieces():
        yield b"a" * 10
        raise OSError("unexpected end of file while reading request")
    body = ReplayableBody(pieces())
    with pytest.raises(OSError):
        sent(body)
    assert body.client_failed and not body.replayable
    assert not may_retry(UpstreamConnectError("refused"), "PUT", body)
