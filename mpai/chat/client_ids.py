"""A first look at a message's ``client_id``: certainly new, or perhaps a resend.

Nearly every ``client_id`` is new (the widget sends one with every message; a resend
follows only a lost connection), yet proving it in the database is an indexed query,
about a millisecond of ORM work here, before the provider request may leave. One
Redis ``SET NX`` proves it in one round trip: :func:`claim` sets a key per site, user
and ``client_id``; when it was not set before, the message is new. When it was (or
Redis cannot say: not configured, down), the database decides
(:func:`mpai.chat.replay.find_exchange`).

Keys expire after ``MPAI["CLIENT_ID_TTL_SECONDS"]`` (86,400 s = 1 day; 0 turns the
look off). A resend after that, or after Redis lost its keys, is still caught: the
unique constraint on ``(owner, client_id)`` refuses the second exchange when it is
saved, and the turn replays the first one (the provider request sent meanwhile is
dropped; README, "Resends and replays").

The key lives on the rate limiter's Redis (``MPAI["RATE_LIMIT"]``), under
``mpai:cid:<site identity>:<user pk>:<client_id>``, about 100 bytes each.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from mpai.cache.breaker import CLOSED
from mpai.chat.ratelimit.redis_bucket import RedisTokenBucket
from mpai.chat.ratelimit.service import get_rate_limiter
from mpai.conf import mpai_settings
from mpai.site_identity import site_identity

logger = logging.getLogger(__name__)


def claim(user: Any, client_id: str) -> bool:
    """Mark ``client_id`` as sent by ``user``; return True when it certainly was not
    sent before (one Redis round trip), False when it may have been or Redis cannot
    say (then look in the database). Never raises for Redis errors."""
    ttl = int(mpai_settings.CLIENT_ID_TTL_SECONDS)
    limiter = get_rate_limiter()
    if ttl <= 0 or not isinstance(limiter, RedisTokenBucket):
        return False
    if limiter.outage.breaker.state is not CLOSED:  # Redis is down: do not wait for it
        return False
    key = f"mpai:cid:{site_identity()}:{user.pk}:{client_id}"
    try:
        return bool(limiter.client.set(key, 1, nx=True, ex=ttl))
    except (RedisError, OSError):
        logger.debug("mpai could not claim a client_id in Redis", exc_info=True)
        return False
