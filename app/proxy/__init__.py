"""The request's trip upstream and back: the proxy callable, upstream pools and the
HTTP/1.1 client codec, request bodies, admission rules and tunnels.

May import ``lb`` (who gets the request), the shared HTTP/1.1 rules and socket helpers in
``server`` (``http1``, ``sockets``, ``handoff``), and the leaves; never ``middleware``.
"""
