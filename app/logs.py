"""Logging set-up: one format for our own lines, whichever server runs the app.

Owns the root handler and the two formats: ``text`` (``time level logger message``, easy
to grep) and ``json`` (one object per line, for log shippers). A line with structured data
is logged as a ``Fields`` message::

    log.warning(Fields("backend down", backend=url, cause=cause))

Any formatter shows it as ``backend down: backend=URL cause="..."`` (values quoted when
they hold spaces, quotes, ``=`` or control characters, so a line always splits into
pairs and a client cannot forge one); the JSON format turns the fields into keys of the
object instead. It knows nothing of what is logged.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

from gevent import get_hub, getcurrent

from .logging_adapter import skip_caller_lookup

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# With several processes writing to one stream (gunicorn's workers), each line says whose it
# is, where gunicorn's own lines say it: after the time.
PID_TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s"


class Fields:
    """A log message made of a short text and ``key=value`` pairs, rendered only when shown."""

    __slots__ = ("message", "fields")

    def __init__(self, message: str = "", fields: dict | None = None, **more):
        self.message = message
        self.fields = {**fields, **more} if fields else more

    def __str__(self) -> str:
        pairs = render_fields(self.fields)
        return f"{self.message}: {pairs}" if self.message else pairs


def render_value(value) -> str:
    """One value of a ``key=value`` pair, quoted and escaped when needed."""
    if value is None:
        return "-"
    kind = type(value)
    if kind is int or kind is float:
        return str(value)               # nothing in a number needs quoting
    if kind is bool:
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and " " not in text and '"' not in text and "=" not in text:
        return text
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def render_fields(fields: dict) -> str:
    return " ".join(f"{key}={render_value(value)}" for key, value in fields.items())


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` (``PID_TEXT_FORMAT`` with ``pid``), with the time text made once a
    second rather than once a line."""

    def __init__(self, fmt: str | None = None, pid: bool = False):
        super().__init__(fmt or (PID_TEXT_FORMAT if pid else TEXT_FORMAT))
        self.pid = pid
        self._second = None
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt=None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """The time as ``%(asctime)s`` shows it: ``2026-11-25 20:43:04,123``."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._second_text, (created - second) * 1000)

    def fields_line(self, created: float, name: str, fields: dict) -> str:
        """What ``format`` makes of an INFO record of ``Fields("", fields)`` from ``name``."""
        return self.text_line(created, name, render_fields(fields))

    def text_line(self, created: float, name: str, text: str) -> str:
        """``fields_line`` for ``text``, the fields already rendered (``render_fields``)."""
        if self.pid:
            return f"{self.stamp(created)} [{os.getpid()}] INFO {name} {text}"
        return f"{self.stamp(created)} INFO {name} {text}"


# Text that ``render_value`` shows as it is: printable ASCII but space, '"' and '='. A
# line whose text values all match needs no value rendered one by one (``PLAIN_TEXT``).
# ``PLAIN_TEXT(text)`` matches (not None) when ``render_value(text)`` is ``text`` itself (for
# ASCII text; any other text is simply not plain, and goes through ``render_value``).
PLAIN_TEXT = re.compile(r"[!#-<>-~]+").fullmatch


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger (and ``pid`` with ``pid``), message, the
    fields, and any traceback."""

    def __init__(self, pid: bool = False):
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        entry = _json_entry(record.created, record.levelname.lower(), record.name, self.pid)
        if isinstance(record.msg, Fields):
            if record.msg.message:
                entry["message"] = record.msg.message
            entry.update(record.msg.fields)
        else:
            entry["message"] = record.getMessage()
        fields = getattr(record, "fields", None)      # also from a record's extra
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def fields_line(self, created: float, name: str, fields: dict) -> str:
        """What ``format`` makes of an INFO record of ``Fields("", fields)`` from ``name``."""
        entry = _json_entry(created, "info", name, self.pid)
        entry.update(fields)
        return json.dumps(entry, default=str)


def _json_entry(created: float, level: str, name: str, pid: bool = False) -> dict:
    second = int(created)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                     + f".{int((created - second) * 1000):03d}Z",
             "level": level, "logger": name}
    if pid:
        entry["pid"] = os.getpid()
    return entry


class LineHandler(logging.StreamHandler):
    """The handler ``configure_logging`` installs: a ``StreamHandler`` that can also write
    a line of fields straight to its stream (``info_fields``), without building a record.

    Lines written in a greenlet of the gevent hub are gathered and written together when
    the hub next comes round, before it waits for the network again: under load that is
    one write for many requests, when idle it is at once. Every other line (a record, or
    a line from outside the hub) writes what is gathered first, so lines stay in order;
    ``flush`` (at exit) writes it too.
    """

    def __init__(self, stream=None):
        super().__init__(stream)
        self._pending: list[str] = []

    def write_fields(self, name: str, fields: dict) -> None:
        self._gather(self.formatter.fields_line(time.time(), name, fields))

    def write_text(self, name: str, text: str) -> None:
        """``write_fields`` of fields already rendered to ``text`` (a ``TextFormatter``'s)."""
        self._gather(self.formatter.text_line(time.time(), name, text))

    def _gather(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        hub = get_hub()
        if getcurrent().parent is not hub:
            self.write_pending()
        elif len(pending) == 1:
            hub.loop.run_callback(self.write_pending)

    def write_pending(self) -> None:
        pending = self._pending
        if not pending:
            return
        text = self.terminator.join(pending) + self.terminator
        pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging never takes the caller down
            self.handleError(logging.makeLogRecord({"name": "myproxy.access", "msg": text}))

    def emit(self, record: logging.LogRecord) -> None:
        self.write_pending()
        super().emit(record)

    def flush(self) -> None:
        self.write_pending()
        super().flush()


_installed: LineHandler | None = None     # configure_logging's handler, while it is installed


def info_fields(logger: logging.Logger, fields: dict) -> None:
    """``logger.info(Fields("", fields))``, the same line, for a line logged per request.

    When the handler of ``configure_logging`` is the only one the line would reach, the line
    is formatted and written directly: a record, its handler lock and its filters cost
    about a tenth of a proxied request. Any other set-up (a test's ``caplog``, a handler
    added by an embedding program) gets the record as usual.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = direct_handler(logger)
    if handler is not None:
        handler.write_fields(logger.name, fields)
    else:
        logger.info(Fields("", fields))


def direct_handler(logger: logging.Logger) -> LineHandler | None:
    """The handler of ``configure_logging`` when an INFO line of ``logger`` would reach it
    alone and unfiltered, so that it may be written straight to it; else None."""
    handler = _installed
    parent = logger.parent
    if (handler is not None and not logger.handlers and not logger.filters and logger.propagate
            and parent.handlers == [handler] and not parent.propagate and not parent.filters
            and not handler.filters
            and handler.level <= logging.INFO and handler.formatter is not None
            and hasattr(handler.formatter, "fields_line")):
        return handler
    return None


def configure_logging(level: str = "info", fmt: str = "text", stream=None,
                      pid: bool | None = None) -> None:
    """Send the ``myproxy`` loggers to ``stream`` (stderr) at ``level`` in ``fmt``; with
    ``pid``, each line names its process (under gunicorn, whose workers share the stream).
    ``pid`` left out keeps what the handler installed before had (a reload's call)."""
    global _installed
    if pid is None:
        pid = bool(_installed is not None and getattr(_installed.formatter, "pid", False))
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(pid) if fmt == "json" else TextFormatter(pid=pid))
    # The logging HOWTO's "Optimization": the caller's file and line, which no format here
    # shows, are not looked up on every line. (Thread and process fields stay: gunicorn's
    # own log lines show the process ID.)
    skip_caller_lookup()
    logger = logging.getLogger("myproxy")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    _installed = handler
