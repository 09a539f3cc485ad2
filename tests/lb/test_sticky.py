"""The sticky cookie with plain asserts: ids, the lookup, the Cookie line without it, the
Set-Cookie, who may take a bound request, and the settings."""
import base64
import re

import pytest

from app.config import BackendConfig, ConfigError, ForwardedConfig, StickyConfig, parse
from app.lb.balancer import Backend, Balancer, Endpoint
from app.lb.sticky import Sticky, client_tls, cookie_values, without_cookie

URLS = ["http://10.0.0.5:9000", "http://10.0.0.6:9000", "http://10.0.0.7:9000"]


def balancer(urls=URLS):
    return Balancer([Backend(BackendConfig(url)) for url in urls])


def test_an_id_reveals_no_address_and_is_the_same_in_every_instance():
    first, second = Sticky(StickyConfig(cookie="lb")), Sticky(StickyConfig(cookie="lb"))
    one, other = balancer(), balancer()       # two workers or instances: other objects
    ids = [first.backend_id(b) for b in one.backends]
    assert ids == [second.backend_id(b) for b in other.backends]
    assert len(set(ids)) == 3
    for value, url in zip(ids, URLS):
        assert re.fullmatch(r"[A-Za-z0-9_-]{16}", value)     # URL-safe, no quoting needed
        decoded = base64.urlsafe_b64decode(value)
        assert url.encode()[:12] != decoded and b"10.0.0" not in decoded and "9000" not in value


def test_a_secret_gives_other_ids():
    backend = balancer().backends[0]
    plain = Sticky(StickyConfig(cookie="lb")).backend_id(backend)
    keyed = Sticky(StickyConfig(cookie="lb", secret="s3cret")).backend_id(backend)
    assert plain != keyed
    assert keyed == Sticky(StickyConfig(cookie="lb", secret="s3cret")).backend_id(backend)


def test_a_dns_member_is_named_by_its_address():
    template = BackendConfig("http://web.internal:8000", resolve=5.0)
    members = [Backend(template, endpoint=Endpoint(address, 8000, "web.internal"))
               for address in ("10.0.0.1", "10.0.0.2")]
    sticky = Sticky(StickyConfig(cookie="lb"))
    assert sticky.backend_id(members[0]) != sticky.backend_id(members[1])


def test_a_member_dns_takes_away_is_no_longer_found_and_one_that_returns_is():
    template = BackendConfig("http://web.internal:8000", resolve=5.0)
    pool = Balancer.from_configs([template])
    endpoints = [Endpoint(address, 8000, "web.internal") for address in ("10.0.0.1", "10.0.0.2")]
    pool.update_members(template, endpoints)
    sticky = Sticky(StickyConfig(cookie="lb"))
    value = sticky.backend_id(pool.backends[1])
    assert sticky.bound(f"lb={value}", pool.backends) is pool.backends[1]
    pool.update_members(template, endpoints[:1])
    assert sticky.bound(f"lb={value}", pool.backends) is None
    pool.update_members(template, endpoints)
    assert sticky.bound(f"lb={value}", pool.backends).endpoint == endpoints[1]


def test_the_cookie_finds_its_backend_and_a_forged_or_stale_one_finds_none():
    pool = balancer()
    sticky = Sticky(StickyConfig(cookie="lb"))
    value = sticky.backend_id(pool.backends[1])
    assert sticky.bound(f"a=1; lb={value}; b=2", pool.backends) is pool.backends[1]
    assert sticky.bound("lb=AAAAAAAAAAAAAAAAAAAAAA", pool.backends) is None
    assert sticky.bound("lb=", pool.backends) is None
    assert sticky.bound("other=1", pool.backends) is None
    assert sticky.bound(None, pool.backends) is None
    # Another cookie of the same name first (another path's): the valid one is taken.
    assert sticky.bound(f"lb=stale; lb={value}", pool.backends) is pool.backends[1]


def test_the_lookup_follows_the_members():
    pool = balancer()
    sticky = Sticky(StickyConfig(cookie="lb"))
    value = sticky.backend_id(pool.backends[2])
    assert sticky.bound(f"lb={value}", pool.backends) is pool.backends[2]
    pool.reload([BackendConfig(url) for url in URLS[:2]], "round_robin")
    assert sticky.bound(f"lb={value}", pool.backends) is None      # gone from the config
    pool.reload([BackendConfig(url) for url in URLS], "round_robin")
    assert sticky.bound(f"lb={value}", pool.backends).url == URLS[2]   # back: same id


@pytest.mark.parametrize("line,expected", [
    ("lb=x", ""),
    ("a=1; lb=x; b=2", "a=1; b=2"),
    ("lb=x; a=1", "a=1"),
    ("a=1; lb=x", "a=1"),
    ("a=1;lb=x;b=2", "a=1;b=2"),
    ("a=1;  b=\"q r\" ;lb=x", "a=1;  b=\"q r\" "),
    ("a=1; xlb=2; lbx=3; b=lb=4", "a=1; xlb=2; lbx=3; b=lb=4"),     # other names: untouched
    ("a=1; lb=x,c=3; d=4", "a=1; c=3; d=4"),                        # lines a server joined
    ("c=3,lb=x; d=4", "c=3; d=4"),
    ("lb=x; lb=y", ""),
    ("a=1, 2; b=2", "a=1, 2; b=2"),
], ids=["alone", "middle", "first", "last", "no-spaces", "odd-spacing", "similar-names",
        "joined-after", "joined-before", "twice", "comma-in-a-value"])
def test_the_cookie_line_without_the_sticky_cookie(line, expected):
    assert without_cookie(line, "lb") == expected


def test_cookie_values_split_at_semicolons_and_joined_lines():
    assert cookie_values("a=1; lb=x,lb=y;lb=\"z\"", "lb") == ["x", "y", "z"]


@pytest.mark.parametrize("settings,environ,expected", [
    ({}, {}, "lb=ID; Path=/; HttpOnly; SameSite=Lax"),
    ({}, {"wsgi.url_scheme": "https"}, "lb=ID; Path=/; Secure; HttpOnly; SameSite=Lax"),
    ({"secure": "true", "http_only": False, "same_site": "strict", "max_age": 3600.5,
      "path": "/app"}, {}, "lb=ID; Path=/app; Max-Age=3601; Secure; SameSite=Strict"),
    ({"secure": "false"}, {"wsgi.url_scheme": "https"}, "lb=ID; Path=/; HttpOnly; SameSite=Lax"),
    ({"same_site": "none"}, {"wsgi.url_scheme": "https"},
     "lb=ID; Path=/; Secure; HttpOnly; SameSite=None"),
], ids=["defaults", "auto-over-tls", "every-attribute", "never-secure", "same-site-none"])
def test_the_set_cookie_line(settings, environ, expected):
    backend = balancer().backends[0]
    sticky = Sticky(StickyConfig(cookie="lb", **settings))
    assert sticky.set_cookie(backend, environ, ForwardedConfig()) == \
        expected.replace("ID", sticky.backend_id(backend))


def test_secure_auto_believes_x_forwarded_proto_from_a_trusted_proxy_only():
    trusted = parse("backends: [http://127.0.0.1:1]\nforwarded: {trusted_proxies: [10.0.0.0/8]}\n",
                    environ={}).forwarded
    behind = {"HTTP_X_FORWARDED_PROTO": "https", "REMOTE_ADDR": "10.1.1.1"}
    assert client_tls(behind, trusted)
    assert not client_tls({**behind, "REMOTE_ADDR": "203.0.113.9"}, trusted)
    assert not client_tls(behind, ForwardedConfig())


def test_who_may_take_a_request_its_cookie_binds_to_it():
    pool = balancer()
    backend = pool.backends[0]
    assert pool.takes_sticky(backend)
    backend.admin_state = "drain"            # no new requests, but its sticky users stay
    assert pool.takes_sticky(backend) and backend not in pool.candidates()
    backend.admin_state, backend.admin_weight = "ready", 0     # weight 0: drained too
    assert pool.takes_sticky(backend) and backend not in pool.candidates()
    backend.admin_weight = None
    backend.admin_state = "maint"
    assert not pool.takes_sticky(backend)
    backend.admin_state = "ready"
    backend.healthy = False                  # down
    assert not pool.takes_sticky(backend)
    backend.healthy, backend.ejected_until = True, backend.since + 60    # ejected
    assert not pool.takes_sticky(backend)


def test_sticky_settings_per_route_and_their_errors():
    config = parse("backends: [http://127.0.0.1:1]\nsticky: {cookie: lb, max_age: 1h}\n"
                   "routes:\n  - name: api\n    path: /api\n    strip_prefix: true\n"
                   "    backends: [http://127.0.0.1:2]\n    sticky: {cookie: api_lb}\n"
                   "  - name: plain\n    path: /plain\n    backends: [http://127.0.0.1:3]\n"
                   "    sticky: {cookie: \"\"}\n", environ={})
    settings = {route.name: route.sticky for route in config.pools}
    assert settings["default"] == StickyConfig(cookie="lb", max_age=3600.0)
    assert settings["api"] == StickyConfig(cookie="api_lb", max_age=3600.0)    # path stays /
    assert not settings["plain"].enabled
    with pytest.raises(ConfigError, match=r":2:\d+: sticky.cookie: 'l;b' is not a cookie name"):
        parse("backends: [http://127.0.0.1:1]\nsticky: {cookie: 'l;b'}\n", environ={})
    with pytest.raises(ConfigError, match="sticky.same_site: expected one of lax, strict, none"):
        parse("backends: [http://127.0.0.1:1]\nsticky: {cookie: lb, same_site: all}\n", environ={})
    with pytest.raises(ConfigError, match=r"routes\[0\].sticky.secure: must not be false"):
        parse("routes:\n  - name: a\n    backends: [http://127.0.0.1:2]\n"
              "    sticky: {cookie: lb, same_site: none, secure: false}\n", environ={})


def test_the_secret_is_never_shown_by_check_nor_by_a_reload():
    from app.check import describe
    from app.reload import changes
    text = ("backends: [http://127.0.0.1:1]\nsticky: {cookie: lb, secret: %s}\n"
            "routes:\n  - name: api\n    path: /api\n    backends: [http://127.0.0.1:2]\n"
            "    sticky: {secret: %s}\n")
    before = parse(text % ("hunter2", "swordfish"), environ={})
    shown = describe(before)
    assert "hunter2" not in shown and "swordfish" not in shown
    assert re.search(r"sticky\.secret\s+\(set\)", shown) and re.search(r"sticky\.cookie\s+lb", shown)
    changed = changes(before, parse(text % ("hunter3", "swordfish2"), environ={}))
    assert changed == ["sticky.secret (changed)", "route api: sticky.secret (changed)"]
