"""Chat-history reads from a read replica, with a user's own writes read back at once.

A database router (Django's "Multiple databases", "Automatic database routing") for
mpai's history models, :class:`~mpai.models.Conversation`, :class:`~mpai.models.Message`
and :class:`~mpai.models.HistoryCount`:

- writes always go to the primary, the ``default`` database;
- reads go to the replica, ``MPAI["READ_REPLICA"]`` (a ``DATABASES`` alias; None, the
  default, turns routing off), only while a request is served through
  :class:`ReplicaUserMiddleware` (or inside :func:`read_replica_for`). Everything else
  (the websocket chat, Celery tasks, management commands, the body of a streamed
  response) reads the primary;
- a user who wrote history rows (``post_save``/``post_delete`` of those models, for
  the row's owner; and any write routed while serving that user's request) reads the
  primary for ``MPAI["READ_REPLICA_PIN_SECONDS"]`` (5 s) after the write committed, so
  a user always reads their own just-written message, however far the replica lags
  within that window. Another user's reads keep going to the replica;
- a read while the primary's connection is inside ``transaction.atomic()`` goes to
  the primary (the transaction's own rows are not on any replica), and a related
  object is read where its instance came from.

The pin is one key per user, ``mpai:replica-pin:<site identity>:<user pk>``, in
mpai's cache (``MPAI["CACHE_ALIAS"]``), so every process sees it; the site identity
(:mod:`mpai.site_identity`) keeps two sites on one Redis apart. Cost: one cache write
per committed write of a history row, one cache read per history query in a request.

Enable it::

    DATABASES = {"default": {...}, "replica": {..., "TEST": {"MIRROR": "default"}}}
    DATABASE_ROUTERS = ["mpai.db_router.ReplicaRouter"]
    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "mpai.db_router.ReplicaUserMiddleware", ...]
    MPAI = {"READ_REPLICA": "replica"}

The middleware reads ``request.user`` lazily, at the first history query, so a user
DRF authenticates by token (DRF sets it on the underlying request) is known too.
``migrate`` never runs on the replica (it gets its schema by replication).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models.signals import post_delete, post_save
from django.http import HttpRequest, HttpResponseBase

from mpai.conf import mpai_settings

__all__ = [
    "ROUTED_MODELS",
    "ReplicaRouter",
    "ReplicaUserMiddleware",
    "pin_to_primary",
    "pinned_to_primary",
    "read_replica_for",
    "replica_pin_key",
]

#: ``Model._meta.label_lower`` of the models whose reads may go to the replica.
ROUTED_MODELS: frozenset[str] = frozenset(
    {"mpai.conversation", "mpai.message", "mpai.historycount"}
)

#: The user whose request is being served: a callable returning it (read lazily),
#: None outside a request (reads then go to the primary).
_reader: ContextVar[Callable[[], Any] | None] = ContextVar("mpai_replica_reader", default=None)


def _routed(model: type[models.Model]) -> bool:
    return model._meta.label_lower in ROUTED_MODELS


def _user_pk(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


def _site() -> str | None:
    from mpai.chat.scoped_cache import current_site

    return current_site()


def replica_pin_key(owner_id: Any, site: str) -> str:
    """The cache key of ``owner_id``'s pin on ``site``: ``"mpai:replica-pin:<site>:<pk>"``."""
    return f"mpai:replica-pin:{site}:{owner_id}"


def pin_to_primary(owner_id: Any) -> bool:
    """Send ``owner_id``'s history reads to the primary for ``READ_REPLICA_PIN_SECONDS``.

    One ``cache.set`` on ``MPAI["CACHE_ALIAS"]`` with that timeout (seconds). Returns
    False (and stores nothing) when there is no replica, no owner, a pin of 0 s, or no
    site identity (its row unreadable). Never raises for a cache outage (mpai's layered
    cache does not).
    """
    seconds = float(mpai_settings.READ_REPLICA_PIN_SECONDS)
    if not mpai_settings.READ_REPLICA or owner_id is None or seconds <= 0:
        return False
    site = _site()
    if site is None:
        return False
    caches[mpai_settings.CACHE_ALIAS].set(replica_pin_key(owner_id, site), 1, timeout=seconds)
    return True


def pinned_to_primary(owner_id: Any) -> bool:
    """Whether ``owner_id`` wrote history within ``READ_REPLICA_PIN_SECONDS`` (one
    ``cache.get``). Without a site identity the answer is True (the primary is safe)."""
    site = _site()
    if site is None:
        return True
    return caches[mpai_settings.CACHE_ALIAS].get(replica_pin_key(owner_id, site)) is not None


def _pin_after_commit(owner_id: Any, using: str) -> None:
    """Pin ``owner_id`` once the current transaction on ``using`` commits (at once
    outside one): the replica cannot have the row before then. One pin per owner and
    transaction, however many rows it writes (a cascade deletes many)."""
    if owner_id is None or not mpai_settings.READ_REPLICA:
        return
    callback = functools.partial(pin_to_primary, owner_id)
    pending = getattr(transaction.get_connection(using), "run_on_commit", None) or []
    for entry in pending:
        func = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else None
        same = isinstance(func, functools.partial) and func.func is pin_to_primary
        if same and func.args == callback.args:  # type: ignore[union-attr]
            return
    # robust: a failed pin is logged by Django and never fails the caller's commit.
    transaction.on_commit(callback, using=using, robust=True)


@contextlib.contextmanager
def read_replica_for(user: Any) -> Iterator[None]:
    """Route history reads as while serving ``user``'s request (a user instance, an
    ``AnonymousUser``, or a callable returning one), e.g. in a consumer or a script."""
    getter = user if callable(user) and not isinstance(user, models.Model) else lambda: user
    token = _reader.set(getter)
    try:
        yield
    finally:
        _reader.reset(token)


class ReplicaUserMiddleware:
    """Lets :class:`ReplicaRouter` send this request's history reads to the replica.

    Put it after ``AuthenticationMiddleware``. Sync and async capable; it only sets a
    context variable for the time of the view (a streamed response's body is read
    after it, from the primary).
    """

    sync_capable = True
    async_capable = True

    def __init__(
        self, get_response: Callable[[HttpRequest], Any | Awaitable[HttpResponseBase]]
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        with read_replica_for(lambda: getattr(request, "user", None)):
            return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> Any:
        with read_replica_for(lambda: getattr(request, "user", None)):
            return await self.get_response(request)


class ReplicaRouter:
    """Django database router: history reads on ``MPAI["READ_REPLICA"]``, writes on
    ``default`` (module docs). Models other than :data:`ROUTED_MODELS` get no opinion
    (``None``), so the site's other routers or Django's default decide."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        replica = mpai_settings.READ_REPLICA
        if not replica or not _routed(model):
            return None
        instance = hints.get("instance")
        if instance is not None and getattr(instance._state, "db", None):
            return str(instance._state.db)
        reader = _reader.get()
        if reader is None or connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return DEFAULT_DB_ALIAS
        owner = _user_pk(reader())
        if owner is not None and pinned_to_primary(owner):
            return DEFAULT_DB_ALIAS
        return str(replica)

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        if not mpai_settings.READ_REPLICA or not _routed(model):
            return None
        reader = _reader.get()
        if reader is not None:
            # Covers QuerySet.update()/delete(), which send no signal.
            _pin_after_commit(_user_pk(reader()), DEFAULT_DB_ALIAS)
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        replica = mpai_settings.READ_REPLICA
        if not replica:
            return None
        both = {DEFAULT_DB_ALIAS, str(replica)}
        if obj1._state.db in both and obj2._state.db in both:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        replica = mpai_settings.READ_REPLICA
        if replica and db == replica:
            return False
        return None


def _pin_owner(sender: type[models.Model], instance: Any, using: str, **kwargs: Any) -> None:
    if _routed(sender):
        _pin_after_commit(getattr(instance, "owner_id", None), using)


post_save.connect(_pin_owner, dispatch_uid="mpai.db_router.pin_on_save")
post_delete.connect(_pin_owner, dispatch_uid="mpai.db_router.pin_on_delete")
