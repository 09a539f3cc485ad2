"""Retry rules and the retry budget: plain asserts, no I/O."""

import pytest

from app.errors import (UpstreamConnectError, UpstreamConnectTimeout, UpstreamProtocolError,
                        UpstreamReset, UpstreamTimeout)
from app.lb.capacity import RetryBudget
from app.lb.retry import may_retry


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
    assert may_retry(error, method, True) is expected


def test_nothing_is_retried_without_the_whole_body():
    assert not may_retry(UpstreamConnectError("refused"), "GET", False)


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

