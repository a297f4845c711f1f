"""What the layered cache puts into and expects from its shared layers.

- keys: the layered cache makes every key once; inner backends get
  :func:`layer_key`, which passes a key through unchanged or, past
  :data:`MAX_KEY_LENGTH` characters, shortens it to a prefix plus a SHA-256 (the
  database table's ``cache_key`` is ``varchar(255)``); they do not validate it again;
- values: an *envelope* ``(wall_expires, payload)``, ``wall_expires`` being the
  entry's absolute expiry in ``time.time()`` seconds (None = never) and ``payload``
  the value pickled once by the layered cache; anything else is a miss;
- errors: :func:`is_outage` tells "the layer is down" (connection, timeout,
  ``OperationalError``) from "this call was bad".
"""

from __future__ import annotations

import enum
import hashlib
import time
from typing import Any, Literal

from django.core.cache.backends.base import BaseCache
from django.db import InterfaceError, OperationalError

#: Longest key passed to a layer as is; longer keys become a prefix plus a SHA-256.
MAX_KEY_LENGTH = 250

#: ``(wall_expires or None, pickled value)``, stored in every shared layer.
Envelope = tuple[float | None, bytes]
#: An invalidation message: ``(channel, text)``.
Message = tuple[str, str]


class _Unavailable(enum.Enum):
    TOKEN = 0


#: Returned instead of a result when a layer was skipped or failed.
UNAVAILABLE = _Unavailable.TOKEN
Unavailable = Literal[_Unavailable.TOKEN]


def layer_key(key: str, key_prefix: str, version: Any) -> str:
    """Key function given to inner backends: the key as is, hashed when too long."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[:180]}#{digest}"


def _outage_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError, OperationalError, InterfaceError]
    try:
        import redis.exceptions as redis_exc
    except ImportError:  # pragma: no cover - redis is a dependency
        return tuple(types)
    types += [redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.ReadOnlyError]
    return tuple(types)


_OUTAGE_TYPES = _outage_types()


def is_outage(exc: BaseException) -> bool:
    """Return True for errors that mean "the layer is down", not "this call was bad"."""
    return isinstance(exc, _OUTAGE_TYPES)


_RAW_CLASSES: dict[type[BaseCache], type[BaseCache]] = {}


def raw_class(cls: type[BaseCache]) -> type[BaseCache]:
    """Subclass ``cls`` so it does not validate keys again (the layered cache did)."""
    if cls not in _RAW_CLASSES:
        _RAW_CLASSES[cls] = type(f"Layer{cls.__name__}", (cls,), {"validate_key": _no_validation})
    return _RAW_CLASSES[cls]


def _no_validation(self: BaseCache, key: str) -> None:
    return None


def is_redis(backend: BaseCache) -> bool:
    from django.core.cache.backends.redis import RedisCache

    if isinstance(backend, RedisCache):
        return True
    try:
        from django_redis.cache import RedisCache as DjangoRedisCache
    except ImportError:  # pragma: no cover - django-redis is a dependency
        return False
    return isinstance(backend, DjangoRedisCache)


def as_envelope(value: Any) -> Envelope | None:
    """Return ``value`` if it is a live envelope, else None (foreign or expired)."""
    if type(value) is not tuple or len(value) != 2 or type(value[1]) is not bytes:
        return None
    expires = value[0]
    if expires is not None and expires <= time.time():
        return None
    return value
