"""``GET /metrics``: mpai's metrics in the Prometheus text format.

The exposition format: https://prometheus.io/docs/instrumenting/exposition_formats/
(``prometheus_client.CONTENT_TYPE_LATEST``). Who may read it:

- a request carrying ``Authorization: Bearer <token>`` where ``<token>`` equals
  ``MPAI["METRICS_TOKEN"]`` (what a Prometheus scrape job sends with its
  ``authorization`` setting), compared in constant time with :func:`hmac.compare_digest`;
- a signed-in staff user (a browser, for a look).

Otherwise 401 with ``WWW-Authenticate: Bearer`` for an anonymous request or a wrong
token (RFC 6750), 403 for a signed-in user who is not staff.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from mpai.conf import mpai_settings
from mpai.metrics import prometheus


def _bearer_token(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _token_matches(given: str) -> bool:
    expected = mpai_settings.METRICS_TOKEN
    if not expected:
        return False
    return hmac.compare_digest(given.encode(), str(expected).encode())


def _unauthorized(error: str | None = None) -> HttpResponse:
    response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
    challenge = 'Bearer realm="metrics"'
    if error:
        challenge += f', error="{error}"'
    response["WWW-Authenticate"] = challenge
    return response


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve :func:`mpai.metrics.prometheus.exposition` to a scraper or a staff user."""
    token = _bearer_token(request)
    if token is not None:
        if not _token_matches(token):
            return _unauthorized("invalid_token")
    else:
        user = getattr(request, "user", None)  # None without AuthenticationMiddleware
        if user is None or not user.is_authenticated:
            return _unauthorized()
        if not user.is_staff:
            return HttpResponse("Staff only.\n", status=403, content_type="text/plain")
    return HttpResponse(prometheus.exposition(), content_type=prometheus.CONTENT_TYPE_LATEST)
