"""Headless Chromium driven over the DevTools protocol, for tests of the status page.

Uses the system's ``chromium`` (Debian's package; ``.ci/run`` installs it) and
``websocket-client``: no browser is downloaded. ``Browser`` starts one process with its
own throw-away profile and ends it by PID; ``Page.evaluate`` runs JavaScript in the page
and returns the value.
"""
from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request

import gevent
import websocket

from tests.backends import wait_until

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DEVTOOLS = re.compile(r"DevTools listening on (ws://127\.0\.0\.1:(\d+)/\S+)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--ignore-certificate-errors",   # the TLS tests' own certificates
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, profile_dir, width: int = 1200, height: int = 800):
        self.profile_dir = profile_dir
        self.size = (width, height)
        self.proc = None
        self.port = None

    def __enter__(self) -> "Browser":
        log_path = self.profile_dir / "chromium.log"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile_dir / 'profile'}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT)
        match = wait_until(lambda: DEVTOOLS.search(log_path.read_text(errors="replace")), timeout=20)
        if not match:
            self.__exit__(None, None, None)
            raise AssertionError(f"chromium did not start:\n{log_path.read_text(errors='replace')}")
        self.port = int(match.group(2))
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def open(self, url: str) -> "Page":
        """Navigate the browser's first tab to ``url``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as answer:
            targets = json.load(answer)
        tab = next(t for t in targets if t["type"] == "page")
        page = Page(websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=10,
                                                suppress_origin=True))
        page.call("Page.navigate", url=url)
        return page


class Page:
    def __init__(self, connection):
        self._connection = connection
        self._ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events in between are skipped)."""
        message_id = next(self._ids)
        self._connection.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._connection.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            return None          # e.g. the element is not there yet
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Evaluate ``expression`` until it is truthy; return its value, or raise after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            gevent.sleep(0.1)
        raise AssertionError(f"not true within {timeout}s: {expression}")

    def close(self) -> None:
        self._connection.close()
