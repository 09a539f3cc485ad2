"""The request's trip upstream and back: the proxy callable, upstream pools and the
HTTP/1.1 client codec, request bodies, admission rules and tunnels.

May import ``lb`` (who gets the request), ``wire`` (the HTTP/1.1 rules and gevent sockets
it shares with the server) and the leaves; never ``server`` or ``middleware``.
"""
