"""The cached user context is invalidated when the user or the membership changes."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps

from mpai.chat import cache_groups, scoped_cache
from mpai.chat.profile import store_user_profile
from mpai.signals import membership_changed
from mpai.site_identity import site_identity

pytestmark = pytest.mark.django_db


@pytest.fixture
def cache(configure: Any, settings: Any) -> Any:
    layered = configure()
    settings.MPAI = {**getattr(settings, "MPAI", {}), "CACHE_ALIAS": "default"}
    connect_receivers()
    return layered


def connect_receivers() -> None:
    """Connect the receivers as Django does at start-up (``MpaiConfig.ready()``)."""
    apps.get_app_config("mpai").ready()


def cached_context(user: Any) -> Any:
    return scoped_cache.get(str(user.pk), cache_groups.USER_CONTEXT, owner=user.pk)


def remember_context(user: Any) -> None:
    store_user_profile(user, {"name": user.username})


def test_saving_the_user_invalidates_its_context(cache: Any, user: Any, make_user: Any) -> None:
    other = make_user()
    remember_context(user)
    remember_context(other)
    user.first_name = "Changed"
    user.save()
    assert cached_context(user) is None
    assert cached_context(other) == {"name": other.username}


def test_deleting_the_user_invalidates_its_context(cache: Any, user: Any) -> None:
    remember_context(user)
    pk = user.pk
    user.delete()
    assert scoped_cache.get(str(pk), cache_groups.USER_CONTEXT, owner=pk) is None


def test_membership_changed_invalidates_the_context(cache: Any, user: Any) -> None:
    remember_context(user)
    membership_changed.send(sender=object, user=user)
    assert cached_context(user) is None
    remember_context(user)
    membership_changed.send(sender=object, user=user.pk)  # a primary key works too
    assert cached_context(user) is None


def test_the_context_is_invalidated_again_after_commit(
    cache: Any, user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        remember_context(user)
        user.save()
        assert cached_context(user) is None
        remember_context(user)  # a request that read the old row before the commit
    assert len(callbacks) == 1
    assert cached_context(user) is None


def test_ready_connects_each_receiver_once(cache: Any, user: Any) -> None:
    connect_receivers()
    connect_receivers()
    deletes: list[str] = []
    original = cache_groups.delete

    def counting_delete(key: Any, group: str = cache_groups.DEFAULT_GROUP) -> bool:
        deletes.append(key)
        return original(key, group)

    cache_groups.delete = counting_delete
    try:
        membership_changed.send(sender=object, user=user)
    finally:
        cache_groups.delete = original
    # One receiver, not three (on_commit runs later).
    assert deletes == [f"{site_identity()}:{user.pk}"]


def test_a_receiver_never_raises(cache: Any, user: Any, monkeypatch: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("cache exploded")

    monkeypatch.setattr(cache_groups, "delete", broken)
    user.save()  # no exception
    membership_changed.send(sender=object, user=user)
    membership_changed.send(sender=object)  # no user: logged, ignored
