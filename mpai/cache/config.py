"""Parse ``CACHES[alias]["OPTIONS"]`` of :class:`mpai.cache.LayeredCache`.

A layered cache is configured like any Django cache::

    CACHES = {
        "default": {
            "BACKEND": "mpai.cache.LayeredCache",
            "LOCATION": "redis://127.0.0.1:6379/0",  # the default L2; "" = no Redis layer
            "KEY_PREFIX": "site",
            "OPTIONS": {
                # Layers, fastest first. Omitted: memory, then django-redis at LOCATION
                # (if any), then mpai.cache.database.DatabaseLayer (Django's
                # DatabaseCache, one statement per set) in the table "mpai_cache".
                "LAYERS": [
                    {"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore",
                     "OPTIONS": {"MAX_ENTRIES": 10000, "MAX_BYTES": 67108864,
                                 "MAX_ITEM_BYTES": 1048576}},
                    {"NAME": "redis", "BACKEND": "django_redis.cache.RedisCache",
                     "LOCATION": "redis://127.0.0.1:6379/0",
                     "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25}},
                    {"NAME": "database", "ALIAS": "mpai_db"},  # reuse a CACHES entry
                ],
            },
        },
    }

A shared layer is any Django cache backend given as ``BACKEND``/``LOCATION``/``OPTIONS``
(as in ``CACHES``) or as ``ALIAS``, the name of another ``CACHES`` entry whose
``BACKEND``/``LOCATION``/``OPTIONS`` are reused (so ``createcachetable`` finds a
database layer's table). The layered cache makes every key once with its own
``KEY_PREFIX``/``VERSION``/``KEY_FUNCTION``; a layer's own key settings are ignored.

Every option and its default is listed in :data:`TOP_LEVEL_DEFAULTS` and
:data:`MEMORY_DEFAULTS`; unknown names raise ``ImproperlyConfigured`` so a typo does
not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

MEMORY_BACKENDS = frozenset({"mpai.cache.memory.MemoryStore", "memory"})
REDIS_BACKEND = "django_redis.cache.RedisCache"
DJANGO_REDIS_BACKEND = "django.core.cache.backends.redis.RedisCache"
DATABASE_BACKEND = "django.core.cache.backends.db.DatabaseCache"
#: The default database layer: a ``DatabaseCache`` on the same table and rows, with a
#: one-statement ``set`` and a periodic cull (:mod:`mpai.cache.database`). A layer
#: configured with :data:`DATABASE_BACKEND` keeps Django's class.
DATABASE_LAYER_BACKEND = "mpai.cache.database.DatabaseLayer"

#: Table of the default database layer (create it: ``manage.py createcachetable mpai_cache``).
DEFAULT_TABLE = "mpai_cache"

#: Options of the memory layer (its ``OPTIONS``): counts, bytes.
MEMORY_DEFAULTS: dict[str, Any] = {
    "MAX_ENTRIES": 10_000,  # entries kept in L1 per process
    "MAX_BYTES": 64 * 1024 * 1024,  # bytes: pickled values + keys + 100 per entry
    "MAX_ITEM_BYTES": 1024 * 1024,  # bytes: larger values skip L1
}

#: django-redis options the Redis layer gets unless the site sets them (seconds).
REDIS_LAYER_DEFAULTS: dict[str, Any] = {
    "SOCKET_CONNECT_TIMEOUT": 0.25,
    "SOCKET_TIMEOUT": 0.25,
}

#: The same for a Redis layer on Django's own ``RedisCache``, whose OPTIONS go to
#: redis-py's connection pool (seconds). Without them redis-py waits forever, so a Redis
#: that accepts connections and never answers would hang every read.
DJANGO_REDIS_LAYER_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 0.25,
    "socket_timeout": 0.25,
}

#: Top-level OPTIONS of the layered cache and their defaults.
TOP_LEVEL_DEFAULTS: dict[str, Any] = {
    "LAYERS": None,  # list of layer specs, fastest first (None = the default stack)
    "BREAKER_FAILURES": 2,  # consecutive outage errors that open a layer's breaker
    "BREAKER_RESET": 1.0,  # s an open breaker skips its layer before one probe
    "SLOW_CALL": 0.5,  # s; a layer call slower than this counts as a failure
    "INVALIDATION_CHANNEL": "mpai:cache:invalidate",  # Redis pub/sub channel for L1
    "INVALIDATION_PING": 1.0,  # s between pings on the listener connection
    "INVALIDATION_TIMEOUT": 3.0,  # s without a reply before the listener is declared down
    "DEGRADED_L1_TIMEOUT": 1.0,  # s, longest L1 lifetime while the listener is down
    "STALE_TIMEOUT": 30.0,  # s an expired L1 entry may be served by get_or_set in a stampede
    "LOCK_TIMEOUT": 10.0,  # s, stampede/incr lock lifetime and longest wait for it
    "JOURNAL_MAX": 10_000,  # keys remembered per layer while it is down
}

# Options of other Django backends that mean something else here.
_MISPLACED_OPTIONS = {
    "MAX_ENTRIES": "set MAX_ENTRIES in the memory layer's OPTIONS",
    "CULL_FREQUENCY": "the memory layer evicts least recently used entries one by one",
}
_LAYER_KEYS = frozenset(
    {
        "NAME",
        "BACKEND",
        "LOCATION",
        "OPTIONS",
        "ALIAS",
        "BREAKER_FAILURES",
        "BREAKER_RESET",
        "SLOW_CALL",
    }
)


@dataclass(frozen=True)
class MemorySpec:
    """The memory layer: name and sizes (entries, bytes, bytes)."""

    name: str
    max_entries: int
    max_bytes: int
    max_item_bytes: int


@dataclass(frozen=True)
class LayerSpec:
    """One shared layer: a Django cache backend and its breaker settings (s)."""

    name: str
    backend: str
    location: Any
    options: dict[str, Any]
    breaker_failures: int
    breaker_reset: float
    slow_call: float

    def identity(self) -> str:
        return repr((self.name, self.backend, self.location, sorted(self.options.items(), key=str)))


@dataclass(frozen=True)
class StackConfig:
    """Everything that defines one process-wide layer stack."""

    memory: MemorySpec | None
    layers: tuple[LayerSpec, ...]
    channel: str
    ping_interval: float
    dead_after: float
    degraded_l1_timeout: float
    stale_timeout: float
    lock_timeout: float
    journal_max: int
    identity: str = field(default="", compare=False)


def _number(options: dict[str, Any], name: str, minimum: float = 0.0) -> float:
    value = options.get(name, TOP_LEVEL_DEFAULTS[name])
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ImproperlyConfigured(
            f"mpai.cache.LayeredCache OPTIONS[{name!r}] must be a number >= {minimum}, "
            f"not {value!r}."
        )
    return float(value)


def default_layers(location: Any) -> list[dict[str, Any]]:
    """Return the default stack: memory, django-redis at ``location`` (if any), then
    :data:`DATABASE_LAYER_BACKEND` on :data:`DEFAULT_TABLE`."""
    layers: list[dict[str, Any]] = [{"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"}]
    if location:
        layers.append({"NAME": "redis", "BACKEND": REDIS_BACKEND, "LOCATION": location})
    layers.append(
        {"NAME": "database", "BACKEND": DATABASE_LAYER_BACKEND, "LOCATION": DEFAULT_TABLE}
    )
    return layers


def _memory_spec(raw: dict[str, Any], name: str) -> MemorySpec:
    options = dict(raw.get("OPTIONS") or {})
    unknown = set(options) - set(MEMORY_DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"Unknown memory layer OPTIONS: {sorted(unknown)}.")
    values = {**MEMORY_DEFAULTS, **options}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ImproperlyConfigured(f"Memory layer OPTIONS[{key!r}] must be an int >= 0.")
    return MemorySpec(name, values["MAX_ENTRIES"], values["MAX_BYTES"], values["MAX_ITEM_BYTES"])


def _shared_spec(raw: dict[str, Any], name: str, top: dict[str, Any]) -> LayerSpec:
    if "ALIAS" in raw:
        alias = raw["ALIAS"]
        caches = getattr(settings, "CACHES", {})
        if alias not in caches:
            raise ImproperlyConfigured(f"Layer {name!r}: no CACHES entry named {alias!r}.")
        target = caches[alias]
        backend, location = target.get("BACKEND"), target.get("LOCATION", "")
        options = dict(target.get("OPTIONS") or {})
    else:
        backend, location = raw.get("BACKEND"), raw.get("LOCATION", "")
        options = dict(raw.get("OPTIONS") or {})
    if not backend:
        raise ImproperlyConfigured(f"Layer {name!r} needs a BACKEND or an ALIAS.")
    if backend == "mpai.cache.LayeredCache" or backend in MEMORY_BACKENDS:
        raise ImproperlyConfigured(
            f"Layer {name!r}: {backend} cannot be a shared layer (the memory layer may only "
            "come first)."
        )
    if backend == REDIS_BACKEND:
        # Outages are counted and handled by the layered cache, never hidden as misses.
        options["IGNORE_EXCEPTIONS"] = False
        for key, value in REDIS_LAYER_DEFAULTS.items():
            options.setdefault(key, value)
    elif backend == DJANGO_REDIS_BACKEND:
        for key, value in DJANGO_REDIS_LAYER_DEFAULTS.items():
            options.setdefault(key, value)
    layer_top = {k: raw.get(k, top[k]) for k in ("BREAKER_FAILURES", "BREAKER_RESET", "SLOW_CALL")}
    failures = _number(layer_top, "BREAKER_FAILURES", 1)
    return LayerSpec(
        name=name,
        backend=backend,
        location=location,
        options=options,
        breaker_failures=int(failures),
        breaker_reset=_number(layer_top, "BREAKER_RESET"),
        slow_call=_number(layer_top, "SLOW_CALL"),
    )


def parse_options(location: Any, options: dict[str, Any]) -> StackConfig:
    """Build a :class:`StackConfig` from a CACHES entry's LOCATION and OPTIONS.

    Raises:
        ImproperlyConfigured: for unknown option names, bad values, a memory layer
            that is not first, duplicate layer names or an unknown ``ALIAS``.
    """
    for name, hint in _MISPLACED_OPTIONS.items():
        if name in options:
            raise ImproperlyConfigured(f"mpai.cache.LayeredCache OPTIONS[{name!r}]: {hint}.")
    unknown = set(options) - set(TOP_LEVEL_DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"Unknown mpai.cache.LayeredCache OPTIONS: {sorted(unknown)}.")
    top = {**TOP_LEVEL_DEFAULTS, **options}
    raw_layers = top["LAYERS"] if top["LAYERS"] is not None else default_layers(location)
    if not isinstance(raw_layers, list | tuple) or not raw_layers:
        raise ImproperlyConfigured("OPTIONS['LAYERS'] must be a non-empty list of layer specs.")
    memory: MemorySpec | None = None
    shared: list[LayerSpec] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            raise ImproperlyConfigured(f"Layer {index + 1} must be a dict, not {raw!r}.")
        unknown_keys = set(raw) - _LAYER_KEYS
        if unknown_keys:
            raise ImproperlyConfigured(f"Layer {index + 1}: unknown keys {sorted(unknown_keys)}.")
        name = str(raw.get("NAME") or f"l{index + 1}")
        if name in names:
            raise ImproperlyConfigured(f"Two layers are named {name!r}.")
        names.add(name)
        if raw.get("BACKEND") in MEMORY_BACKENDS:
            if index != 0:
                raise ImproperlyConfigured("The memory layer must be the first (fastest) layer.")
            memory = _memory_spec(raw, name)
        else:
            shared.append(_shared_spec(raw, name, top))
    config = StackConfig(
        memory=memory,
        layers=tuple(shared),
        channel=str(top["INVALIDATION_CHANNEL"]),
        ping_interval=_number(top, "INVALIDATION_PING", 0.01),
        dead_after=_number(top, "INVALIDATION_TIMEOUT", 0.02),
        degraded_l1_timeout=_number(top, "DEGRADED_L1_TIMEOUT"),
        stale_timeout=_number(top, "STALE_TIMEOUT"),
        lock_timeout=_number(top, "LOCK_TIMEOUT", 0.001),
        journal_max=int(_number(top, "JOURNAL_MAX")),
    )
    identity = repr(
        (
            memory,
            [layer.identity() for layer in shared],
            [(ly.breaker_failures, ly.breaker_reset, ly.slow_call) for ly in shared],
            config.channel,
            config.ping_interval,
            config.dead_after,
            config.degraded_l1_timeout,
            config.stale_timeout,
            config.lock_timeout,
            config.journal_max,
        )
    )
    digest = hashlib.sha256(identity.encode("utf-8", "backslashreplace")).hexdigest()
    return dataclasses.replace(config, identity=digest)
