"""DRF throttling on mpai's token bucket (:mod:`mpai.chat.ratelimit`).

DRF's own ``SimpleRateThrottle`` reads, computes and writes the cache in separate
steps and lets extra requests through under concurrency (encode/django-rest-framework
#5181, #8127); this throttle asks the same atomic limiter as the websocket chat, through
the one service function :func:`mpai.chat.ratelimit.check`, and only translates its
answer into DRF's ``allow_request``/``wait``.
"""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from mpai.chat import ratelimit
from mpai.chat.ratelimit import Decision


class TokenBucketThrottle(BaseThrottle):
    """Throttle a view with the ``MPAI["RATE_LIMIT"]`` token bucket.

    The bucket is ``user:<pk>`` for an authenticated user, else ``ip:<address>`` with
    DRF's ``get_ident`` (``X-Forwarded-For`` honoured per ``NUM_PROXIES``). With
    ``scope`` unset the bucket is the chat's own, so HTTP and websocket messages share
    one budget; a subclass may set ``scope`` to give its views a bucket of their own
    (``<scope>:user:<pk>``), with the same capacity and refill rate.

    A rejected request becomes DRF's 429 with ``Retry-After`` (``wait()`` in seconds,
    rounded up to whole seconds by DRF). Redis outages allow the request (fail open).
    """

    scope: str | None = None
    cost: float = 1

    def __init__(self) -> None:
        self.decision: Decision | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        self.decision = ratelimit.check(
            user=getattr(request, "user", None),
            address=self.get_ident(request),
            cost=self.cost,
            scope=self.scope,
        )
        return self.decision.allowed

    def wait(self) -> float | None:
        """Seconds until the rejected request would be allowed; None when it was allowed."""
        if self.decision is None or self.decision.allowed:
            return None
        return self.decision.retry_after
