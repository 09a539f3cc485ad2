"""Around every request: request IDs and the access log, metrics, recent traffic, the admin
pages, the runtime admin API (``api``) and the status document.

May import ``lb`` (to read backend state), ``wire.responses``, and the leaves; never
``proxy``: what the proxy did reaches it on the request object (``app.request``).
"""
