"""Exact-origin checking for websocket handshakes.

Browsers send a signed-in user's cookies with a websocket handshake from *any* page,
so the handshake's ``Origin`` header is the only thing that tells a page of the site
from a page elsewhere (cross-site websocket hijacking). Channels'
``AllowedHostsOriginValidator`` compares only the origin's host with ``ALLOWED_HOSTS``:
``http://127.0.0.1:9999`` passes for a site at ``http://127.0.0.1:8000``, and
``https://`` for one served over ``http://``. :class:`OriginValidator` applies the rule
Django's CSRF check applies to unsafe HTTP requests (``CsrfViewMiddleware``, Django's
"Cross Site Request Forgery protection" reference), with scheme, host and port compared
exactly:

- the site's own origin: the scheme the connection came in on (``ws`` → ``http``,
  ``wss`` → ``https``, or what ``SECURE_PROXY_SSL_HEADER`` says when the project sets
  it) and the request's host as ``HttpRequest.get_host()`` gives it (``Host``, or
  ``X-Forwarded-Host`` with ``USE_X_FORWARDED_HOST``; a host outside ``ALLOWED_HOSTS``
  gives no site origin);
- every origin in ``CSRF_TRUSTED_ORIGINS`` (``https://*.example.com`` also matches its
  subdomains, as in Django).

Anything else, a missing ``Origin`` included, is refused at the handshake: the
connection is closed before it is accepted, which ASGI servers answer with HTTP 403
(README, "Websocket ``ws/mpai/chat/``").

Usage (``mpai.asgi.get_asgi_application`` does this for you)::

    from mpai.security import OriginValidator
    websocket_app = OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HandshakeRequest(HttpRequest):
    """A websocket handshake scope seen as a Django ``HttpRequest`` (headers only).

    ``META`` is built as ``ASGIRequest`` builds it (``HTTP_*`` names, repeated headers
    joined with ``,``, names with ``_`` dropped), so ``get_host()``, ``scheme`` and
    ``is_secure()`` follow Django's own rules (``ALLOWED_HOSTS``,
    ``USE_X_FORWARDED_HOST``, ``USE_X_FORWARDED_PORT``, ``SECURE_PROXY_SSL_HEADER``).
    """

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self.path = self.path_info = str(scope.get("path", "/"))
        self.method = "GET"
        self._ws_scheme = str(scope.get("scheme") or "ws")
        server = scope.get("server")
        meta: dict[str, Any] = {
            "SERVER_NAME": str(server[0]) if server else "unknown",
            "SERVER_PORT": str(server[1]) if server and server[1] is not None else "0",
        }
        headers: dict[str, list[str]] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin1").lower()
            if "_" in name:  # as ASGIRequest: no spoofing through "_" versus "-"
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            headers.setdefault(key, []).append(raw_value.decode("latin1"))
        meta.update({key: ",".join(values) for key, values in headers.items()})
        self.META = meta

    def _get_scheme(self) -> str:
        return "https" if self._ws_scheme in ("wss", "https") else "http"


def site_origin(request: HttpRequest) -> str | None:
    """Return the site's own origin for ``request``, e.g. ``"https://example.com:8443"``.

    ``None`` when the host is not in ``ALLOWED_HOSTS`` (``DisallowedHost``), so a
    rebinding domain never counts as the site.
    """
    try:
        host = request.get_host()
    except DisallowedHost:
        return None
    return f"{'https' if request.is_secure() else 'http'}://{host}"


def trusted_origin(origin: str, trusted: Iterable[str]) -> bool:
    """Return whether ``origin`` is one of ``trusted`` (``CSRF_TRUSTED_ORIGINS`` entries).

    Entries match exactly (scheme, host and port as written); an entry with a ``*``
    host, ``https://*.example.com``, matches that scheme with ``example.com`` and its
    subdomains, as ``CsrfViewMiddleware`` does.
    """
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    for entry in trusted:
        if "*" not in entry:
            if origin == entry:
                return True
            continue
        pattern = urlsplit(entry)
        if (
            parsed.scheme == pattern.scheme
            and parsed.netloc
            and is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        ):
            return True
    return False


class OriginValidator:
    """ASGI middleware: let a websocket handshake through only from an allowed origin.

    Args:
        application: the websocket application to protect.
        allowed_origins: origins trusted besides the site's own, in
            ``CSRF_TRUSTED_ORIGINS`` form (``"https://chat.example.com"``,
            ``"https://*.example.com"``). ``None`` (the default) reads
            ``settings.CSRF_TRUSTED_ORIGINS`` at every handshake.

    A refused handshake is closed before ``websocket.accept`` (HTTP 403 from the server)
    and logged at WARNING on the ``mpai.security`` logger.

    Raises:
        ValueError: when called with a scope that is not ``"websocket"``.
    """

    def __init__(self, application: ASGIApp, allowed_origins: Iterable[str] | None = None):
        self.application = application
        self.allowed_origins = None if allowed_origins is None else tuple(allowed_origins)

    def trusted(self) -> tuple[str, ...]:
        """The origins trusted besides the site's own."""
        if self.allowed_origins is not None:
            return self.allowed_origins
        return tuple(getattr(settings, "CSRF_TRUSTED_ORIGINS", ()) or ())

    def origin_allowed(self, scope: Scope) -> bool:
        """Return whether the handshake in ``scope`` comes from an allowed origin."""
        request = HandshakeRequest(scope)
        origin = request.META.get("HTTP_ORIGIN")
        if not origin:
            return False
        if origin == site_origin(request):
            return True
        return trusted_origin(origin, self.trusted())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ValueError(f"OriginValidator handles websocket scopes, not {scope['type']!r}")
        if self.origin_allowed(scope):
            return await self.application(scope, receive, send)
        logger.warning(
            "Websocket handshake to %s refused: origin %r is neither the site's nor trusted",
            scope.get("path"),
            HandshakeRequest(scope).META.get("HTTP_ORIGIN"),
        )
        await deny(receive, send)


async def deny(receive: Receive, send: Send) -> None:
    """Refuse a websocket handshake: close it before ``websocket.accept`` (HTTP 403).

    Unlike Channels' ``WebsocketDenier`` this needs no channel layer.
    """
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close"})
