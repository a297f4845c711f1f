"""This site's identity: a random UUID kept in the site's own database.

Two sites sharing one Redis (their own databases, the same cache settings) have the
same ids: conversations and users start at 1 in every database, so a cache key made
of an id alone names a different thing on each site. :func:`site_identity` returns a
value unique to this database, the ``uuid`` of its one :class:`mpai.models.SiteIdentity`
row, created on first use. It differs between sites even when they share a
``SECRET_KEY`` (the demo's development key). A copy of the database (a restored backup,
a staging clone) keeps it: give such a copy its own ``KEY_PREFIX``, or delete the row
and restart its processes.

Each process keeps the value per database once the row is known to be committed (a
row this process inserted inside a transaction is read again until then); it is
forgotten on ``post_migrate``, which ``manage.py flush`` also sends.
"""

from __future__ import annotations

from typing import Any

from django.db import connections, router, transaction
from django.db.models.signals import post_migrate

#: (database alias, database name) -> identity, once the row is committed.
_known: dict[tuple[str, str], str] = {}
#: Identities this process inserted inside a transaction that may still roll back.
_uncommitted: set[tuple[str, str]] = set()


def site_identity(using: str | None = None) -> str:
    """Return this site's identity: 32 lowercase hex digits (a UUID4).

    Args:
        using: a database alias; default: where the router writes ``SiteIdentity``.

    Raises:
        django.db.DatabaseError: the row can be neither read nor created (e.g. the
            migrations are not applied); the caller's transaction stays usable.
    """
    from mpai.models import SiteIdentity

    alias = using or router.db_for_write(SiteIdentity)
    connection = connections[alias]
    memo = (alias, str(connection.settings_dict.get("NAME")))
    known = _known.get(memo)
    if known is not None:
        return known
    # A savepoint inside the caller's transaction: a failed query must not abort it.
    with transaction.atomic(using=alias):
        row, created = SiteIdentity.objects.using(alias).get_or_create(pk=1)
    value: str = row.uuid.hex
    if not connection.in_atomic_block:
        _known[memo] = value  # the atomic block above committed (or read a committed row)
        _uncommitted.discard(memo)
    elif created:
        _uncommitted.add(memo)  # the caller's transaction may still roll the row back
    elif memo not in _uncommitted:
        _known[memo] = value  # a row this process did not insert: someone committed it
    return value


def forget_site_identity(**kwargs: Any) -> None:
    """Forget the identities this process knows (a ``post_migrate`` receiver: ``flush``
    empties the table, so the next use creates a new row)."""
    _known.clear()
    _uncommitted.clear()


post_migrate.connect(forget_site_identity, dispatch_uid="mpai.site_identity.forget")
