"""Log formats, access lines, event lines and Server-Timing, from a real proxy process where it matters."""
import io
import json
import logging
import os
import re

import pytest

from app import logs
from app.logs import (TEXT_FORMAT, Fields, JsonFormatter, TextFormatter, configure_logging,
                      info_fields)
from tests.backends import wait_until
from tests.conftest import base_config
from tests.servers import serving
from tests.rawclient import get, request


def record(message, level=logging.INFO, **extra):
    entry = logging.LogRecord("myproxy.test", level, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def text(message) -> str:
    return logging.Formatter(TEXT_FORMAT).format(record(message))


def test_the_text_formatter_writes_the_time_as_the_standard_one_does_across_seconds():
    ours, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for created in (1700000000.001, 1700000000.999, 1700000001.5, 1700000000.25):
        entry = record("m")
        entry.created, entry.msecs = created, (created - int(created)) * 1000
        assert ours.format(entry) == standard.format(entry)


def test_text_lines_put_fields_after_the_message_as_key_value_pairs():
    line = text(Fields("backend down", backend="http://h:1", cause='connection "refused"',
                       target="/a?x=1", empty="", missing=None, count=3, flag=True))
    assert line.endswith(' INFO myproxy.test backend down: backend=http://h:1 '
                         'cause="connection \\"refused\\"" target="/a?x=1" empty="" missing=- '
                         'count=3 flag=true')


def test_text_access_lines_are_only_key_value_pairs():
    assert text(Fields("", {"request_id": "abc", "status": 200})).endswith(
        " INFO myproxy.test request_id=abc status=200")


def test_text_values_cannot_forge_a_line():
    line = text(Fields("", target="/x\nINFO fake=1"))
    assert "\n" not in line and 'target="/x\\nINFO fake=1"' in line


def test_any_handler_shows_the_fields(caplog):
    with caplog.at_level(logging.INFO, logger="myproxy"):
        logging.getLogger("myproxy.test").info(Fields("event", key="value"))
    assert "event: key=value" in caplog.text


def test_json_lines_merge_the_fields():
    entry = json.loads(JsonFormatter().format(record(Fields("backend up", backend="http://h:1"))))
    assert entry["message"] == "backend up" and entry["backend"] == "http://h:1"
    assert entry["level"] == "info" and entry["logger"] == "myproxy.test"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", entry["time"])


def test_json_keeps_plain_messages_and_extra_fields():
    entry = json.loads(JsonFormatter().format(record("plain %s", fields={"k": 1})))
    assert entry["message"] == "plain %s" and entry["k"] == 1


def start_json_proxy(start_proxy, config):
    """A proxy logging JSON (the start_proxy fixture waits for a text line)."""
    proxy = start_proxy({**config, "log_format": "json"}, wait=False)
    proxy.port = int(proxy.wait_for(r'"listening on http://[\d.]+:(\d+)').group(1))
    return proxy


def json_lines(proxy, logger):
    entries = [json.loads(line) for line in proxy.lines if line.startswith("{")]
    return [entry for entry in entries if entry["logger"] == logger]


def test_json_access_line_has_every_field(start_proxy, backend):
    proxy = start_json_proxy(start_proxy, base_config([backend.url]))
    body = b"x" * 1000
    status, headers, _ = request(proxy.port, b"POST /echo?q=1 HTTP/1.1\r\nHost: t\r\n"
                                 b"User-Agent: Mozilla/5.0 (X11) tester\r\n"
                                 b"Content-Length: 1000\r\nConnection: close\r\n\r\n" + body)
    assert status == 200
    assert wait_until(lambda: json_lines(proxy, "myproxy.access"), timeout=5)
    entry = json_lines(proxy, "myproxy.access")[0]
    assert entry["request_id"] == headers["x-request-id"]
    assert (entry["client"], entry["method"], entry["target"], entry["status"]) == (
        "127.0.0.1", "POST", "/echo?q=1", 200)
    assert (entry["bytes_in"], entry["bytes_out"], entry["backend"], entry["attempts"]) == (
        1000, 1000, backend.url, 1)
    assert 0 < entry["upstream_ms"] <= entry["duration_ms"]
    assert (entry["host"], entry["user_agent"]) == ("t", "Mozilla/5.0 (X11) tester")
    assert "time" in entry and "message" not in entry


def test_json_events_are_lines_of_their_own(start_proxy, backend):
    proxy = start_json_proxy(start_proxy, base_config([backend.url]))
    backend.stop()
    proxy.wait_for(r'"message": "backend down"', timeout=5)
    down = [e for e in json_lines(proxy, "myproxy.health") if e.get("message") == "backend down"][0]
    assert down["backend"] == backend.url and "refused" in down["cause"]
    assert down["failed_checks"] == 2 and down["level"] == "warning"
    assert any(e["message"].startswith("listening on") for e in json_lines(proxy, "myproxy.server"))


def test_access_log_false_turns_access_lines_off_but_still_counts(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], access_log=False))
    for _ in range(3):
        assert get(proxy.port, "/")[0] == 200
    _, _, metrics = get(proxy.port, "/_myproxy/metrics")
    assert f'myproxy_requests_total{{backend="{backend.url}",code="200",route="default"}} 3.0' in metrics.decode()
    assert "myproxy.access" not in proxy.output


def server_timing(header: str) -> dict:
    metrics = {}
    for part in header.split(","):
        name, *params = [piece.strip() for piece in part.split(";")]
        metrics[name] = dict(param.split("=", 1) for param in params)
    return metrics


def test_server_timing_with_expose_backends_names_the_backend_and_splits_the_time(
        start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], expose_backends=True))
    _, headers, _ = get(proxy.port, "/slow?seconds=0.2")
    timing = server_timing(headers["server-timing"])
    assert timing["upstream"]["desc"] == f'"{backend.url}"'
    assert 200 <= float(timing["upstream"]["dur"]) <= float(timing["total"]["dur"])


def test_server_timing_without_a_backend_has_the_total_only(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url]))
    _, headers, _ = get(proxy.port, "/_myproxy/health")
    assert list(server_timing(headers["server-timing"])) == ["total"]


def test_server_timing_false_leaves_the_header_out(start_proxy, backend):
    proxy = start_proxy(base_config([backend.url], server_timing=False))
    status, headers, _ = get(proxy.port, "/")
    assert status == 200 and "server-timing" not in headers


@pytest.fixture
def configured():
    """``configure_logging`` in this process, to a string; undone after the test."""
    logger = logging.getLogger("myproxy")
    saved = (logger.handlers[:], logger.level, logger.propagate, logs._installed)

    def configure(fmt: str, stream_class=io.StringIO) -> io.StringIO:
        stream = stream_class()
        configure_logging("info", fmt, stream)
        return stream

    yield configure
    logger.handlers[:], logger.level, logger.propagate, logs._installed = saved


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_direct_access_line_is_the_line_a_record_makes(fmt, configured):
    stream = configured(fmt)
    logger = logging.getLogger("myproxy.access")
    fields = {"request_id": "abc", "target": "/a b", "status": 200, "backend": None}
    made, factory = [], logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *args, **kwargs: made.append(1) or factory(*args, **kwargs))
    try:
        info_fields(logger, fields)
    finally:
        logging.setLogRecordFactory(factory)
    assert not made                                     # written without a record
    logger.info(Fields("", fields))
    direct, recorded = stream.getvalue().splitlines()
    if fmt == "json":
        direct, recorded = json.loads(direct), json.loads(recorded)
        assert direct.pop("time")[:19] == recorded.pop("time")[:19]   # the same second
    else:
        assert direct[:19] == recorded[:19]
        direct, recorded = direct[23:], recorded[23:]
    assert direct == recorded


def test_a_direct_access_line_goes_through_logging_when_another_handler_listens(caplog, configured):
    configured("text")
    logger = logging.getLogger("myproxy")
    with caplog.at_level(logging.INFO, logger="myproxy"):
        logger.addHandler(caplog.handler)
        try:
            info_fields(logging.getLogger("myproxy.access"), {"request_id": "xyz"})
        finally:
            logger.removeHandler(caplog.handler)
    assert "request_id=xyz" in caplog.text


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def test_direct_lines_from_greenlets_are_written_together_and_in_order(configured):
    import gevent
    stream = configured("text", CountingStream)
    access, events = logging.getLogger("myproxy.access"), logging.getLogger("myproxy.test")

    def serve(n):
        info_fields(access, {"request": n})
        if n == 4:
            events.warning("after the fifth")      # a record: what is gathered goes first

    gevent.joinall([gevent.spawn(serve, n) for n in range(6)], timeout=5)
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 4)[-1] for line in lines] == [
        "request=0", "request=1", "request=2", "request=3", "request=4", "after the fifth",
        "request=5"]
    assert stream.writes == 3       # five lines at once, the record, the last line


def test_a_direct_line_outside_the_hub_is_written_at_once(configured):
    stream = configured("text")
    info_fields(logging.getLogger("myproxy.access"), {"request": "main"})
    assert stream.getvalue().endswith(" request=main\n")


@pytest.mark.parametrize("values", [
    {},                                                          # a proxied GET, as usual
    {"REMOTE_ADDR": "", "backend": None, "tried": []},            # nothing chosen
    {"RAW_URI": '/a b"c'},                                       # quoted, by render_value
    {"RAW_URI": "/caf\u00e9"},                                   # not ASCII: render_value
    {"REQUEST_METHOD": ""},
    {"id": "id with=space"},
    {"upstream_duration": None, "tried": [("http://a:1", "connect_error"), ("http://b:2", None)]},
    {"HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) \"q\""},   # quoted, on its own
    {"HTTP_USER_AGENT": ""},                                     # "": shown as such
    {"HTTP_USER_AGENT": None, "HTTP_HOST": None},                # not sent: -
    {"HTTP_HOST": "a b"},                                        # quoted, by render_value
    {"sticky": "hit"},                                           # a pool with a sticky cookie
    {"sticky": "rebalanced", "RAW_URI": '/a b'},
])
def test_the_access_line_is_render_fields_of_its_fields(values, configured):
    """The access line written by one format (the usual case) is the line a record of the
    same fields makes, whichever values need quoting."""
    from app.middleware.access import ACCESS_KEYS, RequestLog
    from app.request import KEY as REQUEST, Request
    REQUEST_FIELDS = {"id", "backend", "tried", "upstream_duration", "sticky"}

    class Runtime:
        class config:
            access_log = True

    request = Request(runtime=Runtime, id="0123abcd")
    request.route, request.backend = "default", "http://127.0.0.1:9"
    request.tried, request.upstream_duration = [("http://127.0.0.1:9", None)], 0.00123
    for key in REQUEST_FIELDS & values.keys():
        setattr(request, key, values[key])
    environ = {REQUEST: request, "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "GET",
               "RAW_URI": "/x?y=1", "HTTP_HOST": "shop.test:8080", "HTTP_USER_AGENT": "curl/8.5.0",
               **{key: value for key, value in values.items() if key not in REQUEST_FIELDS}}
    environ = {key: value for key, value in environ.items() if value is not None or
               not key.startswith("HTTP_")}        # a header not sent is not in environ
    stream = configured("text")
    RequestLog(None).finish(environ, "200", 100, 0, started=0.0)
    line = stream.getvalue().rstrip("\n")
    fields = dict(pair.split("=", 1) for pair in re.findall(r'(\w+=(?:"(?:[^"\\]|\\.)*"|\S+))',
                                                             line.split(" myproxy.access ", 1)[1]))
    sticky = fields.pop("sticky", None)
    assert sticky == request.sticky      # last, when the pool has a sticky cookie
    assert list(fields) == list(ACCESS_KEYS)
    expected = {key: logs.render_value(value) for key, value in zip(ACCESS_KEYS, (
        request.id, environ["REMOTE_ADDR"] or None,
        environ["REQUEST_METHOD"], environ.get("HTTP_HOST"), environ["RAW_URI"], 200, 0, 100,
        None, None, "default", request.backend, len(request.tried), None,
        environ.get("HTTP_USER_AGENT")))}
    for key in ("duration_ms", "upstream_ms", "tried"):
        expected[key] = fields[key]        # times vary; tried is checked below
    assert fields == expected
    tried = request.tried
    assert fields["tried"] == logs.render_value(
        ",".join(url + (f"({why})" if why else "") for url, why in tried) or None)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_under_gunicorn_each_workers_lines_carry_its_pid(fmt, backend, tmp_path_factory):
    with serving("gunicorn", tmp_path_factory, {**base_config([backend.url]),
                                                "log_format": fmt}) as proxy:
        for _ in range(4):
            assert get(proxy.port)[0] == 200
        workers = set(re.findall(r"Booting worker with pid: (\d+)", proxy.output))
        assert wait_until(lambda: proxy.output.count("status=200")
                          + proxy.output.count('"status": 200') >= 4)
        ours = [line for line in proxy.output.splitlines()
                if "myproxy." in line and "Booting" not in line]
    assert any("listening on" in line for line in ours) and len(workers) == 1
    for line in ours:
        if fmt == "json":
            assert str(json.loads(line)["pid"]) in workers, line
        else:
            assert re.match(r"\S+ \S+ \[(\d+)\] [A-Z]+ myproxy\.", line).group(1) in workers, line
    assert sum("status=200" in line or '"status": 200' in line for line in ours) == 4


def test_a_reload_that_changes_the_format_keeps_the_pid(configured):
    stream = io.StringIO()
    configure_logging("info", "text", stream, pid=True)     # as wsgi.py does under gunicorn
    stream = configured("json")                             # as a reload does: pid left out
    info_fields(logging.getLogger("myproxy.access"), {"status": 200})
    logging.getLogger("myproxy.test").warning("event")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["pid"] for line in lines] == [os.getpid()] * 2
