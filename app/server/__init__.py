"""Who owns the client socket: the connection's handler (``handler``: each request read
strictly; ``response``: its response written), serving on pywsgi (``standalone``), the gunicorn
worker's pieces, and TLS termination. What of pywsgi and gunicorn they rely on is in
``pywsgi_adapter`` and ``gunicorn_adapter``, and nowhere else.

Imports ``wire`` (the HTTP/1.1 rules it shares with the proxy) and the leaves
(``app.config``, ``app.errors``, ``app.logs``), never ``lb``, ``proxy`` or ``middleware``.
The app it serves is handed in.
"""
