"""Configuration: load ``config/config.yaml`` and the environment into frozen dataclasses.

Owns the schema (every key, its type, its default), parsing of durations and sizes,
``${VAR}`` substitution, the environment overrides, and error messages that name the
file, the key path, and the line. It knows nothing about serving or proxying: values
computed at run time never come back here. One module each job:

- ``schema``: the frozen dataclasses (``Config``, ``RouteConfig``, one per section), ``ConfigError``;
- ``values``: the parser of each kind of value (durations, sizes, rates, URLs, names);
- ``keys``: the key tables (which keys each place may have, and each one's parser);
- ``document``: the YAML document with every key's position, ``${VAR}``, located errors;
- ``pools``: the backends and checks every pool has; ``routes``: the ``routes:`` list;
- ``load``: ``load`` and ``parse``, which assemble the ``Config``;
- ``display``: a value as a user writes it, for ``--check`` and the reload line.

Everything the rest of the app uses is importable from ``app.config`` itself.
"""
from .schema import (AdminConfig, BackendConfig, CertificateFiles, ClusterConfig, Config,
                     ConfigError, DEFAULT_PATH, DEFAULT_ROUTE, ForwardedConfig, HealthCheckConfig, LOG_FORMATS,
                     LOG_LEVELS, LimitsConfig, NO_ROUTE, POLICIES, PassiveHealthConfig,
                     QueueConfig, RateLimitConfig, ResolverConfig, RetriesConfig, RouteConfig,
                     StickyConfig, TLSConfig, TLS_VERSIONS, TimeoutsConfig)  # noqa: F401
from .values import (DEFAULT_SRV_RESOLVE, MIN_RESOLVE, parse_backend_url, parse_duration,
                     parse_size, redact_url)  # noqa: F401
from .keys import (BACKEND_KEYS, CERTIFICATE_KEYS, DURATIONS, POOL_KEYS, POOL_SCALARS,
                   POOL_SECTIONS, ROUTE_KEYS, ROUTE_ONLY_TIMEOUTS, SCALARS, SECRETS, SECTIONS,
                   TLS_KEYS, TLS_SCALARS, TOP_LEVEL_KEYS)  # noqa: F401
from .document import format_keypath  # noqa: F401
from .display import format_value  # noqa: F401
from .load import (load, parse, resolve_path)  # noqa: F401
