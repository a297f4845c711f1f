"""Cached data reaches a prompt only when it proves it belongs to this site, user and
conversation (issue 8, "Between sites"); the site identity behind the proof."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import DatabaseError, transaction

from mpai.chat import cache_groups, history_cache, response_cache, scoped_cache
from mpai.chat.profile import get_user_profile
from mpai.models import Conversation, SiteIdentity
from mpai.providers import ChatRequest
from mpai.site_identity import _known, site_identity

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
OTHER_SITE = uuid.uuid4().hex


@pytest.fixture
def conversation(user: Any) -> Conversation:
    return Conversation.objects.create(owner=user, title="t")


def forge(key: str, group: str, **claims: Any) -> None:
    """Store an entry under this site's key with the given claims."""
    cache_groups.set(scoped_cache.scoped_key(key, site_identity()), claims, group=group)


@pytest.mark.django_db
def test_a_conversation_context_is_read_back_on_its_own_site(conversation: Conversation) -> None:
    history_cache.write_cached_history(conversation, conversation.owner, MESSAGES)
    assert history_cache.read_cached_history(conversation) == MESSAGES
    assert history_cache.read_cached_history(conversation, conversation.owner) == MESSAGES
    history_cache.delete_cached_history(conversation)
    assert history_cache.read_cached_history(conversation) is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        {"site": OTHER_SITE},
        {"owner": "999999"},
        {"conversation": "999999"},
        {"conversation": None},
        {"extra": "field"},
        {"data": [{"role": "user"}]},
        {"data": "not a list"},
    ],
    ids=[
        "other-site",
        "other-owner",
        "other-conversation",
        "no-conversation",
        "extra",
        "shape",
        "type",
    ],
)
def test_a_conversation_context_hit_claiming_anything_else_is_a_miss(
    conversation: Conversation, change: dict[str, Any]
) -> None:
    claims = {
        "site": site_identity(),
        "owner": str(conversation.owner_id),
        "conversation": str(conversation.pk),
        "data": MESSAGES,
    }
    forge(str(conversation.pk), history_cache.GROUP, **{**claims, **change})
    assert history_cache.read_cached_history(conversation) is None


@pytest.mark.django_db
def test_an_entry_keyed_by_the_id_alone_is_never_read(conversation: Conversation) -> None:
    # What a site without this fix (or sharing the Redis) leaves under the bare id.
    cache_groups.set(str(conversation.pk), MESSAGES, group=history_cache.GROUP)
    assert history_cache.read_cached_history(conversation) is None


@pytest.mark.django_db
def test_only_the_owner_reads_or_writes_a_conversation_context(
    conversation: Conversation, make_user: Any
) -> None:
    stranger = make_user()
    history_cache.write_cached_history(conversation, stranger, MESSAGES)
    assert history_cache.read_cached_history(conversation) is None
    history_cache.write_cached_history(conversation, conversation.owner, MESSAGES)
    assert history_cache.read_cached_history(conversation, stranger) is None


@pytest.mark.django_db
def test_a_user_context_of_another_site_or_user_is_not_used(user: Any) -> None:
    user.first_name = "Real"
    user.save()
    forged = {"username": "intruder", "name": "Forged", "email": "", "joined": "", "staff": True}
    for claims in ({"site": OTHER_SITE, "owner": str(user.pk)}, {"owner": str(user.pk + 1)}):
        forge(
            str(user.pk),
            cache_groups.USER_CONTEXT,
            **{"site": site_identity(), "conversation": None, "data": forged, **claims},
        )
        assert get_user_profile(user)["name"] == "Real"
        scoped_cache.delete(str(user.pk), cache_groups.USER_CONTEXT)
    get_user_profile(user)  # cached now, with this site's claims
    assert (
        scoped_cache.get(str(user.pk), cache_groups.USER_CONTEXT, owner=user.pk)["name"] == "Real"
    )


@pytest.mark.django_db
def test_without_a_site_identity_nothing_is_read_or_stored(
    conversation: Conversation, monkeypatch: Any
) -> None:
    history_cache.write_cached_history(conversation, None, MESSAGES)

    def unavailable(using: str | None = None) -> str:
        raise DatabaseError("no such table: mpai_siteidentity")

    monkeypatch.setattr(scoped_cache, "site_identity", unavailable)
    assert history_cache.read_cached_history(conversation) is None
    assert scoped_cache.set("k", 1, cache_groups.USER_CONTEXT, owner=1) is False
    request = ChatRequest(model="m", messages=MESSAGES)
    response_cache.store(request, text="cached", finish_reason="stop", usage=None)
    assert response_cache.lookup(request) is None


@pytest.mark.django_db
def test_the_response_cache_is_keyed_and_checked_by_site() -> None:
    request = ChatRequest(model="m", messages=MESSAGES)
    here = site_identity()
    assert response_cache.cache_key(request) == response_cache.cache_key(request, here)
    assert response_cache.cache_key(request, OTHER_SITE) != response_cache.cache_key(request, here)
    response_cache.store(request, text="ours", finish_reason="stop", usage=None)
    assert response_cache.lookup(request).text == "ours"
    cache_groups.set(
        response_cache.cache_key(request),
        {"site": OTHER_SITE, "text": "theirs", "finish_reason": "stop", "usage": None},
        group=response_cache.GROUP,
    )
    assert response_cache.lookup(request) is None


@pytest.mark.django_db
def test_the_response_cache_key_accepts_lone_surrogates() -> None:
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "bad \ud800 text"}])
    key = response_cache.cache_key(request)
    assert len(key) == 64
    other = ChatRequest(model="m", messages=[{"role": "user", "content": "bad \udfff text"}])
    assert response_cache.cache_key(other) != key


@pytest.mark.django_db
def test_the_site_identity_is_one_stable_row_of_the_database() -> None:
    first = site_identity()
    assert len(first) == 32
    assert site_identity() == first
    assert list(SiteIdentity.objects.values_list("uuid", flat=True)) == [uuid.UUID(first)]


@pytest.mark.django_db(transaction=True)
def test_a_site_identity_rolled_back_with_its_transaction_is_not_kept() -> None:
    _known.clear()
    with transaction.atomic():
        lost = site_identity()
        assert site_identity() == lost  # read again, not kept: it may still roll back
        transaction.set_rollback(True)
    assert not SiteIdentity.objects.exists()
    assert not _known
    kept = site_identity()
    assert kept != lost
    assert list(_known.values()) == [kept]
    with transaction.atomic():
        assert site_identity() == kept
