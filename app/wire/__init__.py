"""HTTP/1.1 on the wire, once, for both sides: what the server reads from clients and the
proxy writes to backends and reads back follow the same rules from here.

- ``http1``: the grammar (tokens, field lines, Host), request heads, framing, the chunk
  codec, which messages carry a body, what ``Connection`` may remove;
- ``responses``: the one rendering of an answer the proxy gives itself, and the head writer;
- ``watch``: whether the client is still there while a backend is waited on;
- ``handoff``: how an upgrade tunnel takes the client connection from whichever server;
- ``gevent_adapter``: gevent's sockets as MyProxy uses them (sending, waiting with a
  deadline, the lingering close), and the gevent internals that relies on, there and
  nowhere else.

A leaf below ``server`` and ``proxy``: it imports only ``app.errors``, and neither of them
imports the other. It knows nothing of configuration, backends or WSGI servers.
"""
