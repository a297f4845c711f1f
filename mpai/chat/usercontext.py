"""The cached user context (seed: user contexts live 5 minutes in the cache).

Invalidated by :mod:`mpai.cache.receivers` when the user is saved or deleted and when
a site sends ``mpai.signals.membership_changed`` for its own membership events.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from mpai import cache as mpai_cache
from mpai.cache.grouped import USER_CONTEXT as GROUP


def get_user_context(user: Any) -> dict[str, Any]:
    """Return ``{"username", "name", "email", "joined", "staff"}`` for ``user``, cached.

    On a miss the user is read again from the database: a websocket connection keeps
    the user object of its handshake, which a profile change leaves stale.
    """
    key = str(user.pk)
    data = mpai_cache.get(key, group=GROUP)
    if data is None:
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
        mpai_cache.set(key, data, group=GROUP)
    return data
