"""What MyProxy relies on of gevent's pywsgi, in one place: ``BaseHandler`` is the one class
of ours built on ``gevent.pywsgi.WSGIHandler``. For gevent 26.9 (``requirements-runtime.txt``
pins it); ``tests/server/test_pywsgi_adapter.py`` pins each point below on a real server and
real sockets, so that a gevent bump that changes one fails there first, by name.

``app.server.handler.Handler`` reads every request and writes every response itself, so no
private name of pywsgi is used anywhere. What is still pywsgi's:

- ``WSGIServer`` accepts each connection and calls ``handler_class(sock, address, server)``
  then ``handle()`` in the connection's greenlet (``ssl_context``: the socket is wrapped
  first), in a ``Pool`` that ``stop(timeout)`` waits for;
- the handler's constructor sets ``socket``, ``client_address``, ``server`` and ``rfile``,
  a buffered reader of the socket (``peek``, ``read``, ``read1``, ``readline``, ``closed``);
- ``handle()`` calls ``handle_one_request()`` until it returns None (True: the next
  request), then closes the socket;
- ``WSGIServer.get_environ()`` gives a fresh environ with the server's keys (``SERVER_NAME``,
  ``SERVER_PORT``, ``wsgi.*``, ``wsgi.url_scheme`` "https" over TLS), and ``ssl_enabled``
  says whether the server speaks TLS;
- ``format_date_time(seconds)``: the ``Date`` value as bytes.

It knows nothing of HTTP's rules nor of MyProxy.
"""
from __future__ import annotations

from gevent.pywsgi import WSGIHandler, format_date_time

__all__ = ["BaseHandler", "format_date_time"]


class BaseHandler(WSGIHandler):
    """pywsgi's connection handler, for its connection loop (module docstring)."""
