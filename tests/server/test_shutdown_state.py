"""The one shutdown state: its phases only go forward. Plain asserts."""
from app.server.shutdown import Shutdown


def test_the_phases_go_forward_only():
    state = Shutdown()
    assert (state.phase, state.closing, state.stopped) == ("serving", False, False)
    state.begin()
    assert (state.phase, state.closing, state.stopped) == ("closing", True, False)
    state.stop()
    assert (state.phase, state.closing, state.stopped) == ("stopped", True, True)
    state.begin()                       # a second SIGTERM changes nothing
    assert state.phase == "stopped"


def test_stopping_without_a_delay_is_closing_too():
    state = Shutdown()
    state.stop()
    assert state.closing and state.stopped
