"""Entry point. ``python wsgi.py [--config PATH] [--check] [--demo]`` serves standalone;
``gunicorn -k gevent wsgi:application`` imports ``application`` from here.

gevent's monkey-patching comes first, before anything imports ssl, requests or urllib3
(STACK-FACTS 12). Importing this module reads the config and builds the app, but connects,
spawns and starts nothing (STACK-FACTS 22): under gunicorn each worker starts its own
background work from ``gunicorn.conf.py``.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402

from app import create_app  # noqa: E402
from app.config import ConfigError, load  # noqa: E402
from app.logs import configure_logging  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python wsgi.py", description="MyProxy, an HTTP load balancer.")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $MYPROXY_CONFIG or config/config.yaml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print the effective settings, and exit 0 or 1")
    parser.add_argument("--demo", action="store_true",
                        help="also start demo backends on the configured localhost ports")
    args = parser.parse_args(argv)

    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"myproxy: config error: {error}", file=sys.stderr)
        return 1
    if args.check:
        print(describe(config))
        return 0

    configure_logging(config.log_level, config.log_format)
    from app.server import serve
    demo_servers = []
    if args.demo:
        from app.demo import start_demo_backends
        demo_servers = start_demo_backends(b.url for b in config.backends)
    try:
        return serve(create_app(config), config)
    finally:
        for server in demo_servers:
            server.stop(timeout=1)


def describe(config) -> str:
    """The effective settings, one per line, each with where it came from."""
    lines = [f"config OK: {config.source}"]

    def show(key, value):
        lines.append(f"  {key:<32} {value!s:<40} ({config.origins.get(key, 'default')})")

    for key in ("host", "port", "policy", "hash_key", "slow_start", "shutdown_timeout",
                "log_level", "log_format", "access_log"):
        show(key, getattr(config, key))
    for index, backend in enumerate(config.backends):
        extra = f" weight={backend.weight}" + (" backup" if backend.backup else "")
        lines.append(f"  backends[{index}]{'':<22} {backend.url + extra:<40} "
                     f"({config.origins.get('backends')})")
    for section in ("health_check", "passive_health", "retries", "timeouts", "limits",
                    "forwarded", "admin"):
        values = getattr(config, section)
        for field in values.__dataclass_fields__:
            value = getattr(values, field)
            if section == "admin" and field == "token":
                value = "(set)" if value else "(none)"
            elif isinstance(value, tuple):
                value = [str(item) for item in value]
            show(f"{section}.{field}", value)
    return "\n".join(lines)


def _application():
    """The app gunicorn serves; a config error stops it with the message, not a traceback."""
    try:
        config = load()
    except ConfigError as error:
        print(f"myproxy: config error: {error}", file=sys.stderr)
        sys.exit(1)
    configure_logging(config.log_level, config.log_format)
    return create_app(config)


if __name__ == "__main__":
    sys.exit(main())
else:
    application = _application()
