"""The background rounds of the group sync and the cluster: at once, then every interval; a
round that raises is logged and the next one runs."""
import logging

import gevent

from app.lb.rounds import Rounds
from tests.backends import wait_until


def test_a_round_at_once_then_every_interval_and_a_failing_one_does_not_end_them(caplog):
    done = []

    def work():
        done.append(len(done))
        if len(done) == 2:
            raise RuntimeError("a bad round")

    rounds = Rounds(work, 0.01, "test round", logging.getLogger("myproxy.test"))
    with caplog.at_level(logging.ERROR, logger="myproxy.test"):
        rounds.start()
        assert done == [0]                       # the first round ran before start returned
        assert wait_until(lambda: len(done) >= 4, timeout=5)
    assert rounds.stop() and not rounds.stop()   # stopped once; the second is a no-op
    count = len(done)
    gevent.sleep(0.05)
    assert len(done) == count
    assert "test round failed; trying again" in caplog.text and "a bad round" in caplog.text
