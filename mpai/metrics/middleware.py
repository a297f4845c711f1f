"""``ResponseTimeMiddleware``: the ``X-Response-Time`` header and HTTP latency by route.

Add ``"mpai.metrics.middleware.ResponseTimeMiddleware"`` first in ``MIDDLEWARE`` so the
time covers the other middleware too. For every HTTP response it:

- sets ``X-Response-Time`` to the milliseconds from the request entering the middleware
  to the response leaving the view and the middleware below, with three decimals and
  the unit: ``"3.214ms"`` (the format of the Express ``response-time`` middleware). For a
  streaming response it is the time to the response headers, not to the last byte;
- observes the duration (s) in ``mpai_http_request_duration_seconds{route,method,
  status_class}``. ``route`` is the matched URL pattern (``request.resolver_match.route``,
  e.g. ``api/mpai/v1/chat-history/``), or the view name when the pattern is empty, or
  ``<unmatched>`` when no URL matched (404s): never the raw path, whose values are
  unbounded.

Sync and async capable (Django's ``sync_and_async_middleware``): under ASGI it adds no
thread hop.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

from mpai.metrics.prometheus import observe_http_request

HEADER = "X-Response-Time"
UNMATCHED = "<unmatched>"


def route_of(request: HttpRequest) -> str:
    """The URL pattern (or view name) that served ``request``, or ``<unmatched>``."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED
    return match.route or match.view_name or UNMATCHED


def _finish(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    seconds = time.perf_counter() - started
    response[HEADER] = f"{seconds * 1000:.3f}ms"
    observe_http_request(route_of(request), request.method or "", response.status_code, seconds)


@sync_and_async_middleware
def ResponseTimeMiddleware(get_response: Callable[[HttpRequest], Any]) -> Any:
    """Middleware factory (a class-like name, so ``MIDDLEWARE`` reads naturally)."""
    from asgiref.sync import iscoroutinefunction

    if iscoroutinefunction(get_response):
        async_get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = get_response

        async def async_middleware(request: HttpRequest) -> HttpResponseBase:
            started = time.perf_counter()
            response = await async_get_response(request)
            _finish(request, response, started)
            return response

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response: HttpResponseBase = get_response(request)
        _finish(request, response, started)
        return response

    return middleware
