"""Receivers that keep the cached user context fresh.

The seed deleted ``user_context_<id>`` on ``profile_update`` and on membership
transactions. Here the entry is this site's entry of the user in group
``"user_context"`` (:data:`mpai.cache.grouped.USER_CONTEXT`, written by
:mod:`mpai.chat.usercontext`), deleted when:

- the user model sends ``post_save`` or ``post_delete``;
- a site sends :data:`mpai.signals.membership_changed` (``sender``, ``user``).

The entry is deleted at once and, when the change happens inside a transaction,
again after it commits, so a request that read the old row before the commit cannot
leave the old context cached for its whole lifetime.

Receivers never raise: an error is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from mpai.signals import membership_changed

logger = logging.getLogger("mpai.cache")


def invalidate_user_context(user: Any) -> None:
    """Delete the cached context of ``user`` (an instance or a primary key) now and
    after the current transaction commits. Never raises."""
    pk = getattr(user, "pk", user)
    if pk is None:
        return
    _delete(pk)
    try:
        if transaction.get_connection().in_atomic_block:
            transaction.on_commit(lambda: _delete(pk))
    except Exception:  # e.g. no usable database connection: the first delete stands
        logger.debug("mpai cache: could not defer the user-context delete", exc_info=True)


def _delete(pk: Any) -> None:
    from mpai.chat.usercontext import delete_user_context  # the entry's key and claims

    try:
        delete_user_context(pk)
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


def connect_receivers() -> None:
    """Connect the receivers (idempotent: each has a ``dispatch_uid``). Call it from
    ``AppConfig.ready()``; it does no I/O."""
    user_model = settings.AUTH_USER_MODEL
    post_save.connect(on_user_saved, sender=user_model, dispatch_uid="mpai.cache.user_saved")
    post_delete.connect(on_user_saved, sender=user_model, dispatch_uid="mpai.cache.user_deleted")
    membership_changed.connect(on_membership_changed, dispatch_uid="mpai.cache.membership")
