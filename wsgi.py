"""Entry point. ``python wsgi.py [--config PATH] [--check [--probe]] [--alive] [--demo]``
serves standalone (``--alive``: the liveness probe of a running one, ``app.liveness``;
``--admin ...``: the admin API of a running one, ``app.admin_client``);
``gunicorn wsgi:application`` imports ``application`` from here.

gevent's monkey-patching comes first, before anything imports ssl, requests or urllib3
(STACK-FACTS 12). Importing this module reads the config and builds the app, but connects,
spawns and starts nothing (STACK-FACTS 22): under gunicorn each worker starts its own
background work from ``gunicorn.conf.py``.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from app import create_app  # noqa: E402
from app.config import ConfigError, load  # noqa: E402
from app.errors import ListenError, StartupError  # noqa: E402
from app.logs import configure_logging  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python wsgi.py", description="MyProxy, an HTTP load balancer.")
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $MYPROXY_CONFIG or config/config.yaml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print the effective settings, and exit 0 or 1")
    parser.add_argument("--probe", action="store_true",
                        help="with --check: also send one health check to each backend; "
                             "exit 1 if any fails")
    parser.add_argument("--alive", action="store_true",
                        help="ask the proxy this config describes for {admin.prefix}/live on "
                             "this machine; exit 0 if it serves, 1 if not (the image's "
                             "HEALTHCHECK)")
    parser.add_argument("--admin", nargs="+", metavar="WORD",
                        help="drive the running proxy this config describes through its admin "
                             "API: list | drain|maint|ready [ROUTE] BACKEND | weight [ROUTE] "
                             "BACKEND N|configured | reload; exit 0 if it did, 1 if not")
    parser.add_argument("--demo", action="store_true",
                        help="also start demo backends on the configured localhost ports")
    parser.add_argument("--demo-backend", metavar="PORT", type=int,
                        help="serve only one demo backend on PORT (no config needed)")
    args = parser.parse_args(argv)

    if args.demo_backend is not None:
        configure_logging()
        from app.demo import serve_demo_backend
        return serve_demo_backend(args.demo_backend)
    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"myproxy: config error: {error}", file=sys.stderr)
        return 1
    if args.alive:
        from app.liveness import alive
        serving, line = alive(config)
        print(f"myproxy: {'alive' if serving else 'not alive'}: {line}",
              file=sys.stdout if serving else sys.stderr)
        return 0 if serving else 1
    if args.admin:
        from app.admin_client import run
        done, text = run(config, args.admin)
        print(text if done else f"myproxy: {text}", file=sys.stdout if done else sys.stderr)
        return 0 if done else 1
    if args.check or args.probe:
        from app.check import certificates, describe, probe, probe_hint
        # A certificate clients refuse (expired, not yet valid) is served, but no "config OK"
        # and exit 1; one that cannot be served stops the proxy: no probe either.
        report, verdict = certificates(config) if config.tls is not None else ("", "ok")
        print(describe(config, ok=verdict == "ok"))
        if report:
            print(report)
        if verdict == "error" or not args.probe:
            if verdict != "error":
                print(probe_hint(config))
            return 0 if verdict == "ok" else 1
        app = create_app(config)
        try:
            report, passed = probe(app)
        finally:
            app.stop()
        print(report)
        return 0 if passed and verdict == "ok" else 1

    configure_logging(config.log_level, config.log_format)
    from app.check import shutdown_warning
    from app.server.standalone import serve
    if shutdown_warning(config):
        logging.getLogger("myproxy").warning("%s", shutdown_warning(config))
    try:
        app = create_app(config)
    except ConfigError as error:        # a TLS certificate it cannot serve
        print(f"myproxy: config error: {error}", file=sys.stderr)
        return 1
    demo_servers = []
    if args.demo:
        from app.demo import start_demo_backends
        demo_servers = start_demo_backends(config)
    try:
        return serve(app, config)
    except ListenError as error:       # one line, as nginx says it
        print(f"myproxy: {error}", file=sys.stderr)
        return 1
    except StartupError as error:
        print(f"myproxy: cannot start: {error}", file=sys.stderr)
        return 1
    finally:
        for server in demo_servers:
            server.stop(timeout=1)


def _application():
    """The app gunicorn serves; a config error stops it with the message, not a traceback.

    Under gunicorn without MyProxy's ``gunicorn.conf.py`` (started outside the checkout,
    where gunicorn does not find it), gunicorn would serve on its sync worker: one request at
    a time, no health checks, long requests killed after 30 s. So it refuses, in one line
    that says how to run it, and the master stops."""
    if "gunicorn.arbiter" in sys.modules and not os.environ.get("MYPROXY_GUNICORN_CONF"):
        here = os.path.dirname(os.path.abspath(__file__))
        print(f"myproxy: gunicorn was started without MyProxy's settings ({here}/gunicorn.conf.py, "
              f"which gunicorn reads from its working directory only): start it in {here} "
              f"(systemd: WorkingDirectory={here}) or name the file: gunicorn --config "
              f"{here}/gunicorn.conf.py wsgi:application", file=sys.stderr)
        from app.server.gunicorn_worker import WORKER_BOOT_ERROR   # the master stops, no respawn
        sys.exit(WORKER_BOOT_ERROR)
    try:
        config = load()
        configure_logging(config.log_level, config.log_format, pid=True)   # workers share stderr
        return create_app(config)
    except ConfigError as error:
        print(f"myproxy: config error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
else:
    application = _application()
