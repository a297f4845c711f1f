from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from mpai import tasks
from mpai.chat.cleanup import cleanup_chat_history
from mpai.models import Conversation, Message

pytestmark = pytest.mark.django_db


def message(user, conversation, age: timedelta, **fields):
    msg = Message.objects.create(
        conversation=conversation, owner=user, role="user", content="x", **fields
    )
    Message.objects.filter(pk=msg.pk).update(created_at=timezone.now() - age)
    return msg


def test_deletes_only_messages_past_retention_and_empty_old_conversations(user):
    old = Conversation.objects.create(owner=user)
    mixed = Conversation.objects.create(owner=user)
    message(user, old, timedelta(days=31))
    message(user, mixed, timedelta(days=31))
    keep = message(user, mixed, timedelta(days=29))
    Conversation.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=31))

    result = cleanup_chat_history()

    assert result.messages_deleted == 2
    assert result.conversations_deleted == 1
    assert list(Message.objects.values_list("pk", flat=True)) == [keep.pk]
    assert set(Conversation.objects.values_list("pk", flat=True)) == {mixed.pk}


def test_retention_days_come_from_settings(user, settings):
    settings.MPAI = {**settings.MPAI, "HISTORY_RETENTION_DAYS": 7}
    conversation = Conversation.objects.create(owner=user)
    message(user, conversation, timedelta(days=8))
    message(user, conversation, timedelta(days=6))
    assert cleanup_chat_history().messages_deleted == 1


def test_stale_streaming_replies_are_closed_with_their_text(user):
    conversation = Conversation.objects.create(owner=user)
    stale = message(user, conversation, timedelta(hours=2), status="streaming")
    live = message(
        user, conversation, timedelta(minutes=1), status="streaming", heartbeat_at=timezone.now()
    )
    # Started a minute ago, but its process stopped beating 40 s ago.
    lost = message(
        user,
        conversation,
        timedelta(minutes=1),
        status="streaming",
        heartbeat_at=timezone.now() - timedelta(seconds=40),
    )
    assert cleanup_chat_history().stale_streams_closed == 2
    lost.refresh_from_db()
    assert lost.status == "error"
    stale.refresh_from_db()
    live.refresh_from_db()
    assert (stale.status, stale.error_code, stale.content) == ("error", "internal_error", "x")
    assert live.status == "streaming"


def test_command_and_task(user, capsys):
    conversation = Conversation.objects.create(owner=user)
    message(user, conversation, timedelta(days=40))
    message(user, conversation, timedelta(days=40))
    call_command("mpai_cleanup", "--days", "30")
    assert "Deleted 2 messages" in capsys.readouterr().out
    message(user, conversation, timedelta(days=40))
    assert tasks.cleanup_chat_history.delay().get()["messages_deleted"] == 1
