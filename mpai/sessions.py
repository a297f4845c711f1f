"""Is a websocket's user still signed in? Checked before each turn.

A websocket authenticates once, at its handshake (Channels' ``AuthMiddlewareStack``);
without a check, an open socket keeps chatting after its user signs out, is
deactivated or changes password. :func:`current_user` reads the session again from
the session store and applies Django's own rules (``django.contrib.auth.get_user``:
the session's user id and backend, ``is_active`` through the backend, and the session
auth hash that a password change invalidates).
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model


def current_user(scope: dict[str, Any]) -> Any | None:
    """Return the socket's user, fresh from the database, or None if it was signed out.

    Blocking (session store and ORM): call it from a thread.

    Args:
        scope: the ASGI scope of the connection, with ``session`` and ``user``
            (Channels' ``AuthMiddlewareStack``).
    """
    session = scope.get("session")
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return None
    if session is None:
        # No session middleware (a site that authenticates sockets its own way): the
        # user must still exist and be active.
        model = get_user_model()
        fresh_user = model._default_manager.filter(pk=user.pk).first()
        return fresh_user if fresh_user is not None and fresh_user.is_active else None
    key = getattr(session, "session_key", None)
    if not key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore
    fresh_session = store(session_key=key)  # a new read, not the handshake's copy
    fresh = auth.get_user(SimpleNamespace(session=fresh_session))  # type: ignore[arg-type]
    if not fresh.is_authenticated or fresh.pk != user.pk:
        return None
    return fresh
