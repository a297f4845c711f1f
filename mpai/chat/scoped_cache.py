"""Cache entries that prove whose data they hold (README, "The chat pipeline").

Data that can reach a prompt (a user's profile, a conversation's recent messages) is
cached through this module, never under an id alone. An entry is stored as::

    {"site": "<site identity>", "owner": "<user pk>", "conversation": "<pk>" | None,
     "data": ...}

under the key ``<site identity>:<key>`` of its group (:mod:`mpai.chat.cache_groups`),
so two sites on one Redis without a ``KEY_PREFIX`` neither read nor overwrite each
other's entries. :func:`get` also checks every claim of a hit against the caller's
site, owner and conversation: an entry claiming anything else, or not shaped like an
entry, is a miss. Without a site identity (its database row unreadable) nothing is read or stored.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError

from mpai.chat import cache_groups
from mpai.site_identity import site_identity

logger = logging.getLogger("mpai.cache")

_FIELDS = frozenset({"site", "owner", "conversation", "data"})


def current_site() -> str | None:
    """Return this site's identity (:func:`mpai.site_identity.site_identity`), or None
    when its database row can be neither read nor created (logged)."""
    try:
        return site_identity()
    except DatabaseError:
        logger.warning("mpai cache: no site identity, the cache is bypassed", exc_info=True)
        return None


def _claim(pk: Any) -> str | None:
    return None if pk is None else str(pk)


def scoped_key(key: str, site: str) -> str:
    """Return the grouped-cache key of ``key`` on ``site``: ``"<site>:<key>"``."""
    return f"{site}:{key}"


def get(key: str, group: str, *, owner: Any, conversation: Any = None) -> Any:
    """Return the data cached under ``key`` in ``group`` for this site, or None.

    Args:
        owner: the primary key of the user the data must belong to.
        conversation: the primary key of the conversation it must belong to (None:
            the entry must claim no conversation).

    Returns:
        The entry's ``data`` when its site, owner and conversation all match, else
        None (a mismatch is logged as a warning and is a miss).
    """
    site = current_site()
    if site is None:
        return None
    entry = cache_groups.get(scoped_key(key, site), group=group)
    if entry is None:
        return None
    claims = {"site": site, "owner": _claim(owner), "conversation": _claim(conversation)}
    if (
        not isinstance(entry, dict)
        or entry.keys() != _FIELDS
        or any(entry[name] != value for name, value in claims.items())
    ):
        logger.warning(
            "mpai cache: an entry of group %s does not belong to %s; not used", group, claims
        )
        return None
    return entry["data"]


def set(  # the grouped API's name
    key: str,
    data: Any,
    group: str,
    *,
    owner: Any,
    conversation: Any = None,
    timeout: Any = cache_groups.NOT_GIVEN,
) -> bool:
    """Cache ``data`` under ``key`` in ``group`` with this site's claims.

    Args:
        owner, conversation: primary keys, as for :func:`get`.
        timeout: seconds; not given = the group's default lifetime.

    Returns:
        False when nothing was stored (no site identity), else True.
    """
    site = current_site()
    if site is None:
        return False
    entry = {
        "site": site,
        "owner": _claim(owner),
        "conversation": _claim(conversation),
        "data": data,
    }
    cache_groups.set(scoped_key(key, site), entry, group=group, timeout=timeout)
    return True


def delete(key: str, group: str) -> bool:
    """Delete this site's entry ``key`` of ``group``; return whether it was cached."""
    site = current_site()
    if site is None:
        return False
    return cache_groups.delete(scoped_key(key, site), group=group)
