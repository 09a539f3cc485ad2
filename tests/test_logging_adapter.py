"""``app.logging_adapter``: the one private name of ``logging`` it sets, pinned by name."""
import logging

import pytest

from app.logging_adapter import skip_caller_lookup


class Caught(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logger():
    """A logger of its own, its records caught; ``logging._srcfile`` put back after."""
    saved = logging._srcfile
    caught = Caught()
    made = logging.getLogger("myproxy.test.logging_adapter")
    made.addHandler(caught)
    made.propagate = False
    made.setLevel(logging.INFO)
    made.caught = caught
    yield made
    made.removeHandler(caught)
    logging._srcfile = saved


def test_srcfile_set_means_each_record_carries_its_callers_file_and_line(logger):
    logging._srcfile = logging.__file__.replace(".pyc", ".py")   # the module's own default
    logger.info("here")
    found = logger.caught.records[-1]
    assert (found.pathname, found.funcName) == (__file__, "test_srcfile_set_means_each_record_"
                                                "carries_its_callers_file_and_line")
    assert found.lineno > 0


def test_srcfile_none_skips_the_callers_lookup(logger):
    skip_caller_lookup()
    assert logging._srcfile is None
    logger.info("here")
    found = logger.caught.records[-1]               # findCaller would have named this file
    assert (found.pathname, found.lineno, found.funcName) == ("(unknown file)", 0,
                                                              "(unknown function)")
