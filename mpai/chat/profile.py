"""The cached user profile: what the prompt's user-info section says (5 minutes by default).

Entries live in the ``user_context`` group (:data:`mpai.chat.cache_groups.USER_CONTEXT`)
through :mod:`mpai.chat.scoped_cache`: keyed by site and user, and used only when they
claim this site and this user (ids start at 1 on every site sharing a Redis).

The receivers below, connected in ``MpaiConfig.ready()``, delete this
site's entry of the user when:

- the user model sends ``post_save`` or ``post_delete``;
- a site sends :data:`mpai.signals.membership_changed` (``sender``, ``user``) for its
  own membership events.

The entry is deleted at once and, when the change happens inside a transaction, again
after it commits, so a request that read the old row before the commit cannot leave
the old context cached for its whole lifetime. Receivers never raise: an error is
logged.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from mpai.chat import scoped_cache
from mpai.chat.cache_groups import USER_CONTEXT as GROUP

logger = logging.getLogger("mpai.cache")


def get_user_profile(user: Any) -> dict[str, Any]:
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
        store_user_profile(user, data)
    return data


def store_user_profile(user: Any, data: dict[str, Any]) -> None:
    """Cache ``data`` as the context of ``user`` (the group's lifetime, 300 s default)."""
    scoped_cache.set(str(user.pk), data, GROUP, owner=user.pk)


def delete_user_profile(user: Any) -> bool:
    """Forget the cached context of ``user`` (an instance or a primary key) on this site;
    return whether it was cached."""
    pk = getattr(user, "pk", user)
    return scoped_cache.delete(str(pk), GROUP)


# -- invalidation receivers -----------------------------------------------------------


def invalidate_user_context(user: Any) -> None:
    """Delete the cached context of ``user`` (an instance or a primary key) now and
    after the current transaction commits. Never raises."""
    pk = getattr(user, "pk", user)
    if pk is None:
        return
    _delete_quietly(pk)
    try:
        if transaction.get_connection().in_atomic_block:
            transaction.on_commit(lambda: _delete_quietly(pk))
    except Exception:  # e.g. no usable database connection: the first delete stands
        logger.debug("mpai cache: could not defer the user-context delete", exc_info=True)


def _delete_quietly(pk: Any) -> None:
    try:
        delete_user_profile(pk)
    except Exception:
        logger.exception("mpai cache: could not invalidate the context of user %s", pk)


def on_user_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save``/``post_delete`` receiver for the user model."""
    if kwargs.get("raw"):
        return  # fixture loading
    invalidate_user_context(instance)


def on_membership_changed(sender: Any, user: Any = None, **kwargs: Any) -> None:
    """``membership_changed`` receiver."""
    if user is None:
        logger.warning("mpai cache: membership_changed sent by %r without a user", sender)
        return
    invalidate_user_context(user)
