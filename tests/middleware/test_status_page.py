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


def admin_states(port: int) -> list[str]:
    document = json.loads(get(port, "/_myproxy/api/backends")[2])
    return [row["admin_state"] for row in document["backends"]]


def test_the_page_drains_a_backend_puts_it_in_maint_and_makes_it_ready(start_proxy, backends, tmp_path):
    a, b, c = backends
    proxy = start_proxy(base_config(x.url for x in backends))
    button = lambda state: f"{row(b.url)}.querySelector('.admin button[data-state={state}]')"  # noqa: E731
    with Browser(tmp_path) as browser:
        page = browser.open(proxy.url + "/_myproxy/")
        page.wait_for(f"{button('drain')} !== null")
        assert page.evaluate(f"{button('ready')}.getAttribute('aria-pressed')") == "true"
        page.evaluate(f"{button('drain')}.click()")
        page.wait_for(f"{row(b.url)}.dataset.admin === 'drain'", timeout=5)
        assert admin_states(proxy.port) == ["ready", "drain", "ready"]
        assert "sticky requests only" in page.evaluate(f"{row(b.url)}.querySelector('.why').textContent")
        assert page.evaluate(f"{button('drain')}.getAttribute('aria-pressed')") == "true"
        assert {get(proxy.port, "/x")[2] for _ in range(6)} == {b"backend a", b"backend c"}

        page.evaluate(f"{button('maint')}.click()")
        page.wait_for(f"{row(b.url)}.dataset.admin === 'maint'", timeout=5)
        assert admin_states(proxy.port) == ["ready", "maint", "ready"]
        page.evaluate(f"{button('ready')}.click()")
        page.wait_for(f"{row(b.url)}.dataset.admin === 'ready'", timeout=5)
        assert admin_states(proxy.port) == ["ready"] * 3
        assert page.evaluate("document.getElementById('error').style.display") != "block"
        page.close()
    proxy.wait_for(rf"admin change: action=ready route=default backend={b.url} state=maint->ready client=127.0.0.1")


def test_a_page_on_another_origin_cannot_drive_a_loopback_only_admin(start_proxy, backends, tmp_path):
    a, b, _ = backends
    proxy = start_proxy(base_config([a.url, b.url]))
    api = json.dumps(proxy.url + "/_myproxy/api")
    change = json.dumps(json.dumps({"backend": b.url, "state": "drain"}))
    with Browser(tmp_path) as browser:
        page = browser.open(a.url + "/")            # another origin: the backend's own page
        page.wait_for(f"location.origin === {json.dumps(a.url)}")
        # A JSON PATCH needs a CORS preflight, which is refused; a "simple" POST (a form's,
        # text/plain) is sent without one, and refused by the admin itself.
        page.evaluate(f"""window.results = [];
            const settle = p => p.then(r => 'answered ' + r.type + ' ' + r.status, e => 'failed ' + e.name);
            Promise.all([
              settle(fetch({api} + '/backends', {{method: 'PATCH', body: {change},
                    headers: {{'Content-Type': 'application/json'}}}})),
              settle(fetch({api} + '/reload', {{method: 'POST', mode: 'no-cors', body: {change},
                    headers: {{'Content-Type': 'text/plain'}}}})),
              settle(fetch({api} + '/backends', {{method: 'POST', mode: 'no-cors', body: {change}}})),
            ]).then(r => {{ window.results = r; }});""")
        results = page.wait_for("window.results.length === 3 && window.results")
        page.close()
    assert results[0] == "failed TypeError"              # the preflight found no CORS grant
    assert admin_states(proxy.port) == ["ready", "ready"]
    metrics = get(proxy.port, "/_myproxy/metrics")[2].decode()
    assert 'myproxy_admin_changes_total{action="reload"} 0.0' in metrics
    assert 'myproxy_config_reloads_total{result="success"} 0.0' in metrics
    # The simple POSTs reached the admin, which answered 403.
    assert proxy.output.count("target=/_myproxy/api/reload status=403") == 1, proxy.output
