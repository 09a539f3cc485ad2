"""What a request hashes on under ``policy: hash``."""
import ipaddress

import pytest

from app.lb.affinity import cookie, request_key
from app.config import ForwardedConfig

ENVIRON = {"REMOTE_ADDR": "10.0.0.5", "RAW_URI": "/cart/items?page=2",
           "HTTP_X_USER": "alice", "HTTP_COOKIE": 'theme=dark; session="s-123"; x=1',
           "HTTP_X_FORWARDED_FOR": "198.51.100.7, 10.0.0.9"}


@pytest.mark.parametrize("spec,key", [
    ("client_ip", "10.0.0.5"),
    ("path", "/cart/items"),
    ("header:X-User", "alice"),
    ("header:X-Missing", None),
    ("cookie:session", "s-123"),
    ("cookie:missing", None),
])
def test_request_keys(spec, key):
    assert request_key(dict(ENVIRON), spec) == key


def test_client_ip_behind_trusted_proxies_is_the_nearest_untrusted_hop():
    trusted = ForwardedConfig(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    assert request_key(dict(ENVIRON), "client_ip", trusted) == "198.51.100.7"


def test_cookie_names_match_exactly():
    assert cookie("xsession=1; session=2", "session") == "2"
    assert cookie("session", "session") is None
