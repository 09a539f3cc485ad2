"""The request body's one wrapper: framing, the limit, counting, the replay buffer.
Plain asserts over in-memory inputs, no I/O."""
import io

import pytest

from app.errors import BadRequest, BodyTooLarge
from app.proxy.body import REPLAY_LIMIT, RequestBody, request_body
from app.wire.http1 import READ_SIZE


def sent(body):
    """Send one attempt of ``body`` to the end; return the bytes."""
    return b"".join(body.attempt() or [])


class Failing(io.BytesIO):
    """An input that gives ``good`` bytes, then raises as a client that went away."""

    def __init__(self, good: bytes):
        super().__init__(good)

    def read(self, size=-1):
        data = super().read(size)
        if not data:
            raise OSError("unexpected end of file while reading request")
        return data


def test_a_small_body_is_kept_and_replayed_whole():
    body = RequestBody(io.BytesIO(b"a" * 100_000), 100_000, limit=150_000)
    first = body.attempt()
    assert next(first) == b"a" * READ_SIZE              # cut off mid-body
    assert body.replayable
    assert sent(body) == b"a" * 100_000
    assert sent(body) == b"a" * 100_000
    assert body.received == 100_000                     # read from the client once


def test_a_body_over_the_limit_streams_and_is_not_kept():
    body = RequestBody(io.BytesIO(b"x" * 80_000), chunked=True)
    assert sent(body) == b"x" * 80_000
    assert not body.replayable
    with pytest.raises(RuntimeError):
        body.attempt()


def test_an_unsent_body_of_any_size_can_still_go_elsewhere():
    size = 3 * REPLAY_LIMIT
    body = RequestBody(io.BytesIO(b"z" * size), size)
    body.prefetch()
    body.attempt()                     # a connect failure: the attempt never sent a byte
    assert body.replayable
    assert sent(body) == b"z" * size


def test_the_prefetched_piece_is_sent_once_and_counted_once():
    body = RequestBody(io.BytesIO(b"hello"), 5)
    body.prefetch()
    body.prefetch()
    assert body.received == 5
    assert sent(body) == b"hello" and sent(body) == b"hello"


def test_no_body_is_none_every_time():
    body = RequestBody()
    assert body.attempt() is None and body.attempt() is None and body.replayable
    assert body.received == 0


def test_a_client_that_fails_mid_body_makes_the_body_unreplayable():
    body = RequestBody(Failing(b"a" * 10), chunked=True)
    with pytest.raises(BadRequest) as raised:
        sent(body)
    assert raised.value.server_error is not None         # given back to the server
    assert body.client_failed and not body.replayable


def test_a_body_shorter_than_its_length_is_the_clients_fault():
    body = RequestBody(io.BytesIO(b"abc"), 10)
    with pytest.raises(BadRequest, match="before the whole body"):
        sent(body)
    assert body.client_failed


def test_the_limit_holds_in_the_middle_of_a_chunked_body():
    body = RequestBody(io.BytesIO(b"y" * (READ_SIZE + 10)), chunked=True, max_bytes=READ_SIZE)
    with pytest.raises(BodyTooLarge):
        sent(body)


@pytest.mark.parametrize("environ, length, chunked, has_body", [
    ({"CONTENT_LENGTH": "5", "wsgi.input": io.BytesIO(b"hello")}, 5, False, True),
    ({"CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO()}, 0, False, False),
    ({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(b"x")}, None, True, True),
    ({"wsgi.input": io.BytesIO()}, None, False, False),
])
def test_request_body_frames_as_the_server_parsed(environ, length, chunked, has_body):
    body = request_body(environ)
    assert (body.length, body.chunked, body.attempt() is not None) == (length, chunked, has_body)


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    stream = io.BytesIO(b"z" * 100)
    with pytest.raises(BodyTooLarge):
        request_body({"CONTENT_LENGTH": "100", "wsgi.input": stream}, max_bytes=10)
    assert stream.tell() == 0


def test_buffer_reads_a_chunked_body_whole_and_frames_it_with_its_length():
    body = RequestBody(io.BytesIO(b"q" * (READ_SIZE + 5)), chunked=True)
    body.prefetch()
    body.buffer(2 * READ_SIZE)
    assert (body.chunked, body.length, body.received) == (False, READ_SIZE + 5, READ_SIZE + 5)
    assert sent(body) == b"q" * (READ_SIZE + 5) and body.replayable


def test_buffer_refuses_past_its_size_having_read_at_most_one_read_more():
    body = RequestBody(io.BytesIO(b"q" * (10 * READ_SIZE)), chunked=True)
    with pytest.raises(BodyTooLarge, match="request_buffering"):
        body.buffer(READ_SIZE + 1)
    assert body.received <= 2 * READ_SIZE
