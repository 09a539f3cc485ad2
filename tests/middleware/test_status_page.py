"""The live status page in a real headless Chromium, served by a running proxy."""
import json

import pytest

from tests.browser import CHROMIUM, Browser
from tests.conftest import base_config
from tests.rawclient import get

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium; .ci/run does)")


def row(url: str) -> str:
    return f"document.querySelector('.row[data-backend={json.dumps(url)}]')"


def test_the_page_shows_a_stopped_backend_down_without_reloading(start_proxy, backends, tmp_path):
    proxy = start_proxy(base_config(b.url for b in backends))
    for _ in range(6):
        get(proxy.port, "/")
    victim = backends[1]
    with Browser(tmp_path) as browser:
        page = browser.open(proxy.url + "/_myproxy/")
        page.wait_for("document.querySelectorAll('.row[data-state=\"up\"]').length === 3")
        assert page.evaluate("document.getElementById('overall').textContent") == "3 of 3 up"
        assert page.evaluate(f"{row(backends[0].url)}.querySelector('.checks i') !== null")
        page.evaluate("window.notReloaded = true")

        victim.stop()
        page.wait_for(f"{row(victim.url)}.dataset.state === 'down'", timeout=5)
        assert page.evaluate("window.notReloaded") is True
        assert "refused" in page.evaluate(f"{row(victim.url)}.querySelector('.why').textContent")
        assert page.evaluate(f"{row(victim.url)}.querySelector('.checks i.fail') !== null")
        assert page.evaluate("document.getElementById('overall').textContent") == "2 of 3 up"
        # Everything the page loaded came from the proxy itself.
        origins = page.evaluate("performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
        assert origins and set(origins) == {proxy.url}

        victim.start()
        page.wait_for(f"{row(victim.url)}.dataset.state === 'up'", timeout=5)
        page.close()


def test_with_a_token_a_browser_logs_in_with_basic_and_the_page_updates(start_proxy, backends, tmp_path):
    proxy = start_proxy(base_config((b.url for b in backends), admin={"token": "s3cret"}))
    with Browser(tmp_path) as browser:
        # As after the browser's login prompt: the page's own requests must carry the credentials.
        page = browser.open(f"http://admin:s3cret@127.0.0.1:{proxy.port}/_myproxy/")
        page.wait_for("document.querySelectorAll('.row[data-state=\"up\"]').length === 3")
        first = page.evaluate("document.getElementById('live').textContent")
        page.wait_for(f"document.getElementById('live').textContent !== {json.dumps(first)}", timeout=5)
        assert page.evaluate("document.getElementById('error').style.display") != "block"
        page.close()


def test_the_page_groups_backends_by_route_in_precedence_order(start_proxy, backends, tmp_path):
    a, b, c = backends
    config = base_config([c.url])
    config["routes"] = [{"name": "site", "path": "/site", "backends": [b.url]},
                        {"name": "api", "host": "api.test", "path": "/v1",
                         "strip_prefix": True, "backends": [a.url, b.url]}]
    proxy = start_proxy(config)
    with Browser(tmp_path) as browser:
        page = browser.open(proxy.url + "/_myproxy/")
        page.wait_for("document.querySelectorAll('.route').length === 3")
        assert page.evaluate("[...document.querySelectorAll('.route')].map(s => s.dataset.route)") == \
            ["api", "site", "default"]
        members = "[...document.querySelectorAll('.route[data-route=\"api\"] .row')].map(r => r.dataset.backend)"
        assert page.evaluate(members) == [a.url, b.url]
        head = page.evaluate("document.querySelector('.route[data-route=\"api\"] .routehead').textContent")
        assert "api.test \u00b7 /v1 (prefix stripped)" in head and "2 of 2 up" in head
        b.stop()      # a member of two routes: down in both, each its own row
        page.wait_for("document.querySelectorAll('.row[data-state=\"down\"]').length === 2", timeout=5)
        page.wait_for("document.querySelector('.route[data-route=\"site\"]').dataset.up === '0'", timeout=5)
        assert "1 of 2 up" in page.evaluate(
            "document.querySelector('.route[data-route=\"api\"] .routehead').textContent")


def test_over_https_the_page_shows_each_certificate_s_days_left_and_an_expired_one_in_red(start_proxy, backend, tmp_path):
    from tests.certs import make_certificate
    site = make_certificate(tmp_path, "site", ["site.test", "*.site.test"], days=40)
    soon = make_certificate(tmp_path, "soon", ["soon.test"], days=3)
    old = make_certificate(tmp_path, "old", ["old.test"], expired=True)
    proxy = start_proxy(base_config([backend.url], tls={"certificates": [
        {"cert": site[0], "key": site[1]}, {"cert": soon[0], "key": soon[1]},
        {"cert": old[0], "key": old[1]}]}))
    with Browser(tmp_path) as browser:
        page = browser.open(f"https://127.0.0.1:{proxy.port}/_myproxy/")
        page.wait_for("document.querySelectorAll('#certs span').length === 3")
        texts = page.evaluate("[...document.querySelectorAll('#certs span')].map(e => e.textContent)")
        assert "site.test, *.site.test: 40 days left" in texts[0]
        assert "soon.test: 3 days left" in texts[1]
        assert "old.test: expired 1.0 days ago" in texts[2]          # served, and red
        assert page.evaluate("document.querySelectorAll('#certs span.warn').length") == 1
        assert page.evaluate("document.querySelectorAll('#certs span.bad').length") == 1
        page.close()
