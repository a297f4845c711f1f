"""Export (JSON Lines) and erase of one's own history, and what an erase does to caches,
live memories and a reply streaming meanwhile."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connections
from django.test import AsyncClient
from rest_framework.test import APIClient

from mpai.chat import history_cache, scoped_cache
from mpai.chat.cache_groups import USER_CONTEXT
from mpai.chat.erase import ERASE_CONFIRMATION, erase_user_history
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.profile import get_user_profile
from mpai.exceptions import ConversationNotFound
from mpai.models import Conversation, Message
from mpai.providers.offline import OfflineProvider
from tests.api.helpers import BASE, client_for
from tests.chat.turning import drive

EXPORT = f"{BASE}export/"
ERASE = f"{BASE}history/erase/"


def history(user, conversations=2, per_conversation=3, title="t"):
    made = []
    for c in range(conversations):
        conv = Conversation.objects.create(owner=user, title=f"{title}{c}")
        for i in range(per_conversation):
            role = "user" if i % 2 == 0 else "assistant"
            made.append(
                Message.objects.create(
                    conversation=conv,
                    owner=user,
                    role=role,
                    content=f"{title} {c}/{i} ✓",
                    model="m1",
                )
            )
    return made


def lines(response) -> list[dict]:
    body = b"".join(response.streaming_content)
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.decode("utf-8").splitlines()]


# -- export -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_streams_exactly_the_users_messages_as_json_lines(make_user, settings):
    settings.MPAI = {**settings.MPAI, "EXPORT_CHUNK_SIZE": 2}  # several pages
    alice, bob = make_user("alice"), make_user("bob")
    mine = history(alice, title="alice")
    history(bob, title="bob")

    response = client_for(alice).get(EXPORT)

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="mpai-history-')
    assert response["Content-Disposition"].endswith('.jsonl"')
    rows = lines(response)
    assert [r["message_id"] for r in rows] == [m.pk for m in mine]
    first = rows[0]
    assert set(first) == {
        "conversation_id",
        "conversation_title",
        "message_id",
        "role",
        "content",
        "created_at",
        "model",
        "status",
    }
    assert first["conversation_id"] == mine[0].conversation_id
    assert first["conversation_title"] == "alice0"
    assert (first["role"], first["content"], first["model"], first["status"]) == (
        "user",
        "alice 0/0 ✓",
        "m1",
        "complete",
    )
    assert first["created_at"] == mine[0].created_at.isoformat()
    assert not any("bob" in r["content"] for r in rows)


@pytest.mark.django_db
def test_export_of_an_empty_history_is_empty(user):
    response = client_for(user).get(EXPORT, HTTP_ACCEPT="application/x-ndjson")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b""


@pytest.mark.django_db
def test_export_reads_pages_not_the_whole_history(user, settings, django_assert_num_queries):
    settings.MPAI = {**settings.MPAI, "EXPORT_CHUNK_SIZE": 2}
    history(user, conversations=1, per_conversation=5)
    response = client_for(user).get(EXPORT)
    with django_assert_num_queries(3):  # 2 + 2 + 1 rows
        assert len(lines(response)) == 5


@pytest.mark.django_db(transaction=True)
async def test_export_streams_asynchronously_under_asgi(make_user, settings):
    settings.MPAI = {**settings.MPAI, "EXPORT_CHUNK_SIZE": 2}
    from asgiref.sync import sync_to_async

    user = await sync_to_async(make_user)("asgi")
    mine = await sync_to_async(history)(user, conversations=1, per_conversation=3)
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(EXPORT)
    assert response.status_code == 200
    assert response.is_async
    body = b"".join([chunk async for chunk in response.streaming_content])
    assert [json.loads(line)["message_id"] for line in body.splitlines()] == [m.pk for m in mine]
    await sync_to_async(connections.close_all)()  # the worker thread's connection


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "url"), [("get", EXPORT), ("post", ERASE)])
def test_anonymous_users_are_refused(method, url):
    response = getattr(APIClient(), method)(url, {"confirm": ERASE_CONFIRMATION}, format="json")
    assert response.status_code in (401, 403)


# -- erase ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"confirm": "true"},
        {"confirm": 1},
        {"confirm": False},
        {"confirm": "yes"},
        [True],
    ],
)
def test_erase_needs_the_exact_phrase(user, body):
    history(user)
    response = client_for(user).post(ERASE, body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "confirmation_required"
    assert '{"confirm": true}' in response.json()["detail"]
    assert Message.objects.filter(owner=user).count() == 6


@pytest.mark.django_db
def test_erase_rejects_a_body_that_is_not_json(user):
    response = client_for(user).post(ERASE, b"{nope", content_type="application/json")
    assert response.status_code == 400
    assert Message.objects.filter(owner=user).exists() is False  # nothing was made


@pytest.mark.django_db
def test_erase_removes_only_the_users_data_and_cached_context(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    history(alice, title="alice")
    history(bob, title="bob")
    for u in (alice, bob):
        get_user_profile(u)  # caches the profile
        for conv in Conversation.objects.filter(owner=u):
            history_cache.write_cached_history(conv, u, [{"role": "user", "content": "hi"}])
    alice_convs = list(Conversation.objects.filter(owner=alice))

    response = client_for(alice).post(ERASE, {"confirm": ERASE_CONFIRMATION}, format="json")

    assert response.status_code == 204
    assert response.content == b""
    assert not Message.objects.filter(owner=alice).exists()
    assert not Conversation.objects.filter(owner=alice).exists()
    assert Message.objects.filter(owner=bob).count() == 6
    assert scoped_cache.get(str(alice.pk), USER_CONTEXT, owner=alice.pk) is None
    assert all(history_cache.read_cached_history(c) is None for c in alice_convs)
    assert scoped_cache.get(str(bob.pk), USER_CONTEXT, owner=bob.pk) is not None
    assert all(
        history_cache.read_cached_history(c) is not None
        for c in Conversation.objects.filter(owner=bob)
    )


def pipeline(**options) -> ChatPipeline:
    options.setdefault("first_token_ms", 0)
    options.setdefault("tokens_per_second", 0)
    options.setdefault("reply", "A short answer.")
    return ChatPipeline(OfflineProvider(**options))


@pytest.mark.django_db
def test_a_live_memory_of_an_erased_conversation_is_never_used_again(user):
    pipe = pipeline()
    first = drive(pipe.stream(user=user, content="Hello"))
    conversation_id = first.message.conversation_id
    assert conversation_id in pipe.memories  # the connection's live memory
    assert history_cache.read_cached_history(Conversation.objects.get(pk=conversation_id))

    erase_user_history(user)

    with pytest.raises(ConversationNotFound):
        pipe.stream(user=user, content="And then?", conversation_id=conversation_id)
    assert not Message.objects.filter(owner=user).exists()
    # A new conversation starts empty: no old memory meets it.
    second = drive(pipe.stream(user=user, content="Fresh start"))
    assert second.message.conversation_id != conversation_id
    assert pipe.memories[second.message.conversation_id].messages[0]["content"] == "Fresh start"


@pytest.mark.django_db(transaction=True)
def test_a_reply_streaming_in_this_process_is_cancelled_then_erased(user):
    pipe = pipeline(tokens_per_second=50, reply=" ".join(["word"] * 500))
    streaming = threading.Event()
    outcome: dict = {}

    def run():
        try:
            events = pipe.stream(user=user, content="Tell me a long story")
            outcome["result"] = drive(events, lambda _t: streaming.set())
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connections.close_all()  # this thread's connection

    thread = threading.Thread(target=run)
    thread.start()
    assert streaming.wait(10)
    started = time.perf_counter()
    result = erase_user_history(user)
    thread.join(10)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["result"].status == "cancelled"
    assert result.turns_cancelled == 1
    assert result.messages_deleted == 2
    assert time.perf_counter() - started < 5  # the stream stopped: no wait for its end
    assert not Message.objects.filter(owner=user).exists()
    assert not Conversation.objects.filter(owner=user).exists()


@pytest.mark.django_db
def test_erase_of_ten_thousand_messages_in_batches(user):
    conv = Conversation.objects.create(owner=user)
    Message.objects.bulk_create(
        [
            Message(conversation=conv, owner=user, role="user", content="x" * 200)
            for _ in range(10_000)
        ]
    )
    result = erase_user_history(user)
    assert result.messages_deleted == 10_000
    assert result.conversations_deleted == 1
    assert result.batches == 11  # 10 batches of 1000 messages, 1 of conversations
    print(f"erase of 10k messages: {result.duration_ms:.0f} ms")
    assert not Message.objects.filter(owner=user).exists()


@pytest.mark.django_db
def test_erase_refuses_a_bad_batch_size(user):
    with pytest.raises(ValueError, match="batch_size"):
        erase_user_history(user, batch_size=0)
