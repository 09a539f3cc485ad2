"""Who owns the client socket: serving on pywsgi (``standalone``), the strict connection,
the gunicorn worker's pieces, handing a socket over for a tunnel, and the HTTP/1.1 rules
(``http1``) and socket helpers (``sockets``) that the proxy's upstream side shares.

The lowest package: imports only the leaves (``app.config``, ``app.errors``), never ``lb``,
``proxy`` or ``middleware``. The app it serves is handed in.
"""
