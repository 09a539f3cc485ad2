"""Who gets the request: backends and their state, the balancer, policies, active health
checks, retry rules and the request key for affinity, routes and DNS discovery; and the
traffic rules of a pool: its slots, queue and retry budget (``capacity``), sticky sessions (``sticky``),
rate limits (``ratelimit``) and the admin states set at run time (``overrides``).

Imports only the leaves (``app.config``, ``app.errors``, ``app.logs``): nothing from
``proxy``, ``middleware`` or ``server``. A collaborator that does I/O (the health check's
upstream) is handed in by the composition root.
"""
