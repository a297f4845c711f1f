"""The whole ASGI application of a site that uses mpai, in one call.

A project's ``asgi.py`` (README, "Using mpai in your own project")::

    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

    from mpai.asgi import get_asgi_application

    application = get_asgi_application()

The application routes by ASGI scope type:

- ``http``: Django (``django.core.asgi.get_asgi_application()``, or the
  ``http_application`` given), behind ``ASGIStaticFilesHandler`` when static files
  are served (see ``static_files``);
- ``websocket``: :class:`mpai.security.OriginValidator` (exact origins: the site's own
  and ``CSRF_TRUSTED_ORIGINS``), then Channels' ``AuthMiddlewareStack`` (the session
  user in ``scope["user"]``), then ``mpai.routing.websocket_urlpatterns`` followed by
  the site's own ``websocket_urlpatterns``;
- ``lifespan``: :data:`mpai.lifespan.app` (server shutdown stops streaming replies and
  saves them as cancelled).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured


def get_asgi_application(
    *,
    websocket_urlpatterns: Sequence[Any] = (),
    static_files: bool | None = None,
    http_application: Any = None,
) -> Any:
    """Return the project's ASGI application (a Channels ``ProtocolTypeRouter``).

    Sets Django up first (``DJANGO_SETTINGS_MODULE`` must be set), so it may be called
    at the top of ``asgi.py`` before anything imports models.

    Args:
        websocket_urlpatterns: the site's own websocket routes (``path()`` /
            ``re_path()`` to consumers' ``as_asgi()``), tried after mpai's
            ``ws/mpai/chat/``; they get the same origin check and session user.
        static_files: serve ``STATIC_URL`` from the staticfiles finders in this process
            (``ASGIStaticFilesHandler``, as ``runserver`` does). ``None`` (the default):
            only when ``DEBUG`` is on and ``django.contrib.staticfiles`` is installed;
            ``True``: always (a small site without a web server or CDN in front);
            ``False``: never.
        http_application: the ASGI application for HTTP (e.g. Django's, wrapped in the
            site's own middleware); default ``django.core.asgi.get_asgi_application()``.

    Raises:
        ImproperlyConfigured: ``static_files=True`` without ``django.contrib.staticfiles``
            in ``INSTALLED_APPS``.
    """
    from django.core.asgi import get_asgi_application as django_asgi_application

    django_app = django_asgi_application()  # django.setup() before consumers are imported
    http_app = django_app if http_application is None else http_application

    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.apps import apps
    from django.conf import settings

    from mpai import lifespan, routing
    from mpai.security import OriginValidator

    staticfiles_installed = apps.is_installed("django.contrib.staticfiles")
    if static_files is None:
        static_files = bool(settings.DEBUG) and staticfiles_installed
    if static_files:
        if not staticfiles_installed:
            raise ImproperlyConfigured(
                "get_asgi_application(static_files=True) needs 'django.contrib.staticfiles' "
                "in INSTALLED_APPS."
            )
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        http_app = ASGIStaticFilesHandler(http_app)

    routes = [*routing.websocket_urlpatterns, *websocket_urlpatterns]
    return ProtocolTypeRouter(
        {
            "http": http_app,
            "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(routes))),
            "lifespan": lifespan.app,
        }
    )
