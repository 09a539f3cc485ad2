"""Configuration texts for the benchmark's servers: pure functions, no I/O.

Each balancer gets one process (or one thread) of work and the product's usual defaults,
with keep-alive to the backends, so the comparison is one core's worth of each. Knows
nothing of how the servers are started.
"""
from __future__ import annotations

# The static files every backend serves: URL path -> size in bytes.
FILES = {"/100b": 100, "/64k": 64 * 1024, "/1m": 1024 * 1024}
HEALTH_PATH = "/100b"

# nginx closes a keep-alive connection after 1,000 requests by default; neither HAProxy nor
# MyProxy does, so lift it for a like-for-like comparison.
KEEPALIVE_REQUESTS = 1_000_000
UPSTREAM_KEEPALIVE = 100      # idle backend connections each balancer may keep (MyProxy: per backend)
# nginx's default proxy_buffers (8 x 4 KiB) move a 1 MiB body 4 KiB at a time, at 2-3 ms of
# CPU a request here, slower than HAProxy's defaults by 3x: no yardstick. 16 x 64 KiB is the
# usual tuning for large responses.
NGINX_PROXY_BUFFERS = "proxy_buffers 16 64k;\n      proxy_busy_buffers_size 128k;"

_NGINX_COMMON = """\
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections {worker_connections}; }}
"""

_NGINX_TEMP = """\
  client_body_temp_path {workdir}/{name}-tmp/body;
  proxy_temp_path {workdir}/{name}-tmp/proxy;
  fastcgi_temp_path {workdir}/{name}-tmp/fastcgi;
  uwsgi_temp_path {workdir}/{name}-tmp/uwsgi;
  scgi_temp_path {workdir}/{name}-tmp/scgi;
"""


def nginx_backends(workdir: str, root: str, ports: list[int]) -> str:
    """One nginx (one worker) serving ``root``'s files on each of ``ports``."""
    name = "backend-nginx"
    servers = "".join(f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n" for port in ports)
    return (_NGINX_COMMON.format(workdir=workdir, name=name, worker_connections=8192)
            + "http {\n"
            + "  access_log off;\n  sendfile on;\n  tcp_nodelay on;\n"
            + "  default_type application/octet-stream;\n"
            + f"  keepalive_requests {KEEPALIVE_REQUESTS};\n  keepalive_timeout 300s;\n"
            + _NGINX_TEMP.format(workdir=workdir, name=name)
            + servers + "}\n")


# Mozilla "intermediate" for nginx, as MyProxy's tls: serves it (app/server/tls.py).
NGINX_TLS = """\
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {ciphers};
    ssl_prefer_server_ciphers off;
"""


def nginx_balancer(workdir: str, port: int, backends: list[str],
                   tls: tuple[str, str] | None = None, name: str = "nginx-lb") -> str:
    """nginx as a round-robin balancer (one worker), HTTP/1.1 keep-alive to the backends,
    its default access log on (to a file), buffers sized for large responses. With ``tls``
    (cert, key), it listens with TLS and the intermediate profile (its session tickets on,
    its default)."""
    from app.server.certificates import INTERMEDIATE_CIPHERS
    listen = f"    listen 127.0.0.1:{port}{' ssl' if tls else ''};\n"
    if tls:
        listen += NGINX_TLS.format(cert=tls[0], key=tls[1], ciphers=INTERMEDIATE_CIPHERS)
    upstreams = "".join(f"    server {url.split('://', 1)[1]};\n" for url in backends)
    return (_NGINX_COMMON.format(workdir=workdir, name=name, worker_connections=20000)
            + "http {\n"
            + f"  access_log {workdir}/{name}-access.log;\n"
            + f"  keepalive_requests {KEEPALIVE_REQUESTS};\n  keepalive_timeout 300s;\n"
            + _NGINX_TEMP.format(workdir=workdir, name=name)
            + "  upstream backends {\n" + upstreams
            + f"    keepalive {UPSTREAM_KEEPALIVE};\n"
            + f"    keepalive_requests {KEEPALIVE_REQUESTS};\n  }}\n"
            + "  server {\n" + listen
            + "    location / {\n      proxy_pass http://backends;\n"
            + "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
            + f"      {NGINX_PROXY_BUFFERS}\n"
            + "    }\n  }\n}\n")


def haproxy_balancer(port: int, backends: list[str]) -> str:
    """HAProxy as a round-robin balancer (one thread), keep-alive both sides, no logging
    (its default without a syslog target)."""
    servers = "".join(f"  server b{index} {url.split('://', 1)[1]}\n"
                      for index, url in enumerate(backends))
    return ("global\n  nbthread 1\n  maxconn 5000\n\n"
            "defaults\n  mode http\n  option http-keep-alive\n"
            "  timeout connect 3s\n  timeout client 60s\n  timeout server 30s\n"
            "  timeout http-keep-alive 300s\n\n"
            f"frontend bench\n  bind 127.0.0.1:{port}\n  default_backend backends\n\n"
            "backend backends\n  balance roundrobin\n  http-reuse safe\n" + servers)


def caddy_balancer(port: int, backends: list[str]) -> str:
    """Caddy as a round-robin balancer (its ``reverse_proxy``, Go's net/http underneath):
    no admin endpoint, no automatic HTTPS, no access log (Caddy logs requests only with a
    ``log`` directive), keep-alive both sides with as many idle connections per backend as
    the others keep; bound to loopback, any Host (no matcher). One core's worth comes from ``GOMAXPROCS=1`` in its environment."""
    upstreams = " ".join(url.split("://", 1)[1] for url in backends)
    return ("{\n  admin off\n  auto_https off\n}\n\n"
            f"http://:{port} {{\n  bind 127.0.0.1\n"
            f"  reverse_proxy {upstreams} {{\n"
            "    lb_policy round_robin\n"
            "    transport http {\n"
            "      keepalive 300s\n"
            f"      keepalive_idle_conns {UPSTREAM_KEEPALIVE * len(backends)}\n"
            f"      keepalive_idle_conns_per_host {UPSTREAM_KEEPALIVE}\n"
            "    }\n  }\n}\n")


def myproxy(port: int, backends: list[str], **overrides) -> dict:
    """A MyProxy config: the product's defaults, on loopback, health checks on a file the
    backends serve. ``overrides`` replace top-level keys (sections merge)."""
    config = {
        "host": "127.0.0.1",
        "port": port,
        "backends": list(backends),
        "health_check": {"path": HEALTH_PATH},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


ROUTES = 100      # the route table of the myproxy-routes contender


def route_table(backends: list[str], count: int = ROUTES) -> list[dict]:
    """``count`` routes, a third each exact hosts with a path, wildcard hosts, and any-host
    path prefixes, over the same backends, health checks off (the benchmark measures the
    lookup, not 300 more checks). None of them takes the benchmark's requests
    (``Host: 127.0.0.1``, ``/100b``...), which fall through every any-host rule to the
    default pool: the lookup's longest way."""
    routes = []
    for index in range(count):
        route = {"name": f"r{index}", "backends": list(backends),
                 "health_check": {"enabled": False}}
        kind = index % 3
        if kind == 0:
            route.update(host=f"svc{index}.example.com", path=f"/p{index}")
        elif kind == 1:
            route["host"] = f"*.zone{index}.example.com"
        else:
            route["path"] = f"/api{index}"
        routes.append(route)
    return routes
