"""A started turn always ends saved; resends wait with a deadline (mpai.chat.leases)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from mpai.chat import leases, saving
from mpai.chat import pipeline as pipeline_module
from mpai.chat.pipeline import ChatPipeline, save_reply
from mpai.models import Conversation, Message
from mpai.providers.offline import OfflineProvider
from tests.chat.turning import drive

pytestmark = pytest.mark.django_db

REPLY = "one two three four five six"


def offline_pipeline() -> ChatPipeline:
    return ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))


def test_an_unexpected_failure_after_streaming_saves_the_partial_reply_as_error(user, monkeypatch):
    pipe = offline_pipeline()
    events = pipe.stream(user=user, content="hello")
    turn = events.turn
    deltas: list[str] = []

    def broken_remember(*args, **kwargs):
        raise RuntimeError("cache exploded")

    monkeypatch.setattr(
        pipeline_module.ConversationHistory, "remember", staticmethod(broken_remember)
    )
    result = drive(events, deltas.append)
    saved = Message.objects.get(pk=turn.assistant_message.pk)
    assert result.error is not None
    assert result.error.code == "internal_error"
    assert saved.status == "error"
    assert saved.content == "".join(deltas) == REPLY


def test_a_response_cache_failure_after_the_final_event_leaves_the_reply_complete(
    user, monkeypatch
):
    # The cache write waits until the client has its final event; failing, it is logged.
    pipe = offline_pipeline()
    events = pipe.stream(user=user, content="hello")
    stored: list[str] = []

    def broken_store(*args, **kwargs):
        stored.append("tried")
        raise RuntimeError("cache exploded")

    monkeypatch.setattr(pipeline_module.response_cache, "store", broken_store)
    result = drive(events)
    assert stored == ["tried"]
    assert result.status == "complete"
    assert Message.objects.get(pk=result.message.pk).status == "complete"


@pytest.mark.django_db(transaction=True)  # the retry closes the connection
def test_the_final_save_is_retried_on_a_fresh_connection(user, monkeypatch):
    pipe = offline_pipeline()
    events = pipe.stream(user=user, content="hello")
    turn = events.turn
    real_write = saving.write_reply
    failures = []

    def flaky_write(message):
        if message.pk == turn.assistant_message.pk and not failures:
            failures.append(1)
            raise OperationalError("terminating connection due to administrator command")
        return real_write(message)

    monkeypatch.setattr(saving, "write_reply", flaky_write)
    result = drive(events)
    assert failures == [1]
    assert result.status == "complete"
    assert Message.objects.get(pk=turn.assistant_message.pk).content == REPLY


def test_save_reply_gives_up_after_its_attempts(user, monkeypatch):
    message = Message(pk=1)
    calls = []

    def always_fails(message):
        calls.append(1)
        raise OperationalError("down")

    monkeypatch.setattr(saving, "write_reply", always_fails)
    with pytest.raises(OperationalError):
        save_reply(message, attempts=3)
    assert len(calls) == 3


def stuck_reply(user, client_id: str, heartbeat_at) -> Message:
    conversation = Conversation.objects.create(owner=user)
    Message.objects.create(
        conversation=conversation, owner=user, role="user", content="hi", client_id=client_id
    )
    return Message.objects.create(
        conversation=conversation,
        owner=user,
        role="assistant",
        status="streaming",
        heartbeat_at=heartbeat_at,
    )


def test_a_resend_of_an_orphaned_reply_marks_it_failed_and_says_so(user):
    reply = stuck_reply(user, "c1", timezone.now() - timedelta(minutes=10))
    pipe = offline_pipeline()
    events = pipe.stream(user=user, content="hi", client_id="c1")
    turn = events.turn
    result = drive(events)
    assert turn.replayed
    assert result.error is not None
    assert result.error.code == "internal_error"
    reply.refresh_from_db()
    assert reply.status == "error"


def test_a_resend_of_a_live_reply_ends_at_its_deadline_and_leaves_the_reply_alone(user, settings):
    settings.MPAI = {**settings.MPAI, "REPLAY_TIMEOUT_SECONDS": 0.3, "REPLAY_POLL_SECONDS": 0.05}
    reply = stuck_reply(user, "c2", timezone.now() + timedelta(hours=1))
    pipe = offline_pipeline()
    events = pipe.stream(user=user, content="hi", client_id="c2")
    result = drive(events)
    assert result.error is not None
    assert result.error.code == "provider_timeout"
    reply.refresh_from_db()
    assert reply.status == "streaming"


def test_a_reply_held_by_this_process_is_never_called_orphaned(user):
    reply = stuck_reply(user, "c3", timezone.now() - timedelta(minutes=10))
    leases.hold(reply.pk)
    try:
        assert not leases.fail_if_orphaned(reply.pk)
        assert leases.beat() == 1
    finally:
        leases.release(reply.pk)
    reply.refresh_from_db()
    assert reply.status == "streaming"
    assert reply.heartbeat_at > timezone.now() - timedelta(seconds=5)
    assert not leases.fail_if_orphaned(reply.pk)  # the fresh heartbeat counts


def test_a_conversation_deleted_while_its_reply_streams_ends_the_turn_quietly(user):
    # Another process deleted it (the conversations API, an erase of the user's history).
    pipe = offline_pipeline()
    events = pipe.stream(user=user, content="hello")
    conversation_id = events.turn.conversation.pk

    def delete_it(_text: str) -> None:
        Conversation.objects.filter(pk=conversation_id).delete()

    result = drive(events, delete_it)
    assert result.status == "complete"
    assert result.error is None
    assert not Message.objects.filter(conversation_id=conversation_id).exists()
    assert not Conversation.objects.filter(pk=conversation_id).exists()


def test_save_reply_reports_a_row_that_is_gone(user):
    conversation = Conversation.objects.create(owner=user, title="t")
    message = Message.objects.create(
        conversation=conversation, owner=user, role="assistant", status="streaming"
    )
    Message.objects.filter(pk=message.pk).delete()
    message.content, message.status = "late", "complete"
    assert save_reply(message) is False
    assert not Message.objects.exists()
