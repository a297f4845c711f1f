"""The cached user context (seed: user contexts live 5 minutes in the cache).

Entries live in the ``user_context`` group through :mod:`mpai.chat.scoped_cache`:
keyed by site and user, and used only when they claim this site and this user
(issue 8: ids start at 1 on every site sharing a Redis).

Invalidated by :mod:`mpai.cache.receivers` when the user is saved or deleted and when
a site sends ``mpai.signals.membership_changed`` for its own membership events.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from mpai.cache.grouped import USER_CONTEXT as GROUP
from mpai.chat import scoped_cache


def get_user_context(user: Any) -> dict[str, Any]:
    """Return ``{"username", "name", "email", "joined", "staff"}`` for ``user``, cached.

    On a miss the user is read again from the database: a websocket connection keeps
    the user object of its handshake, which a profile change leaves stale.
    """
    data = scoped_cache.get(str(user.pk), GROUP, owner=user.pk)
    if not isinstance(data, dict):
        # get_user_model(): the user may be a lazy wrapper (Channels' UserLazyObject).
        user = get_user_model()._default_manager.filter(pk=user.pk).first() or user
        data = {
            "username": user.get_username(),
            "name": user.get_full_name() if hasattr(user, "get_full_name") else "",
            "email": getattr(user, "email", ""),
            "joined": user.date_joined.date().isoformat()
            if getattr(user, "date_joined", None)
            else "",
            "staff": bool(getattr(user, "is_staff", False)),
        }
        store_user_context(user, data)
    return data


def store_user_context(user: Any, data: dict[str, Any]) -> None:
    """Cache ``data`` as the context of ``user`` (the group's lifetime, 300 s default)."""
    scoped_cache.set(str(user.pk), data, GROUP, owner=user.pk)


def delete_user_context(user: Any) -> bool:
    """Forget the cached context of ``user`` (an instance or a primary key) on this site;
    return whether it was cached."""
    pk = getattr(user, "pk", user)
    return scoped_cache.delete(str(pk), GROUP)
