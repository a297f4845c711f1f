"""The chat history's ``count`` from a per-user counter kept by PostgreSQL triggers
(``mpai.models.HistoryCount``, migration 0010): right after every way messages come and
go, and page 1 makes no ``COUNT(*)``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from mpai.chat.cleanup import cleanup_chat_history
from mpai.chat.erase import erase_user_history
from mpai.chat.history import history_count
from mpai.chat.pipeline import ChatPipeline
from mpai.models import Conversation, Message
from mpai.providers.offline import OfflineProvider
from tests.api.helpers import client_for
from tests.chat.turning import drive

pytestmark = pytest.mark.django_db
URL = "/api/mpai/v1/chat-history/"


def real_count(user) -> int:
    return Message.objects.filter(owner=user).count()


def turn(user, conversation_id=None):
    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply="Sure."))
    return drive(pipe.stream(user=user, content="hello", conversation_id=conversation_id))


def test_the_counter_follows_turns_deletes_cleanup_and_erase(user, make_user):
    other = make_user()
    assert history_count(user=user) == 0
    first = turn(user)
    turn(user, first.message.conversation_id)
    turn(other)
    assert history_count(user=user) == real_count(user) == 4
    assert history_count(user=other) == 2

    Conversation.objects.filter(pk=turn(user).message.conversation_id).delete()  # a cascade
    assert history_count(user=user) == real_count(user) == 4

    Message.objects.filter(conversation_id=first.message.conversation_id).update(
        created_at=timezone.now() - timedelta(days=400)
    )
    cleanup_chat_history(days=30)
    assert history_count(user=user) == real_count(user) == 0
    assert history_count(user=other) == 2

    erase_user_history(other)
    assert history_count(user=other) == real_count(other) == 0


def test_page_one_reads_the_counter_not_a_count(user):
    turn(user)
    turn(user)
    with CaptureQueriesContext(connection) as queries:
        body = client_for(user).get(URL, {"page": 1, "per_page": 3}).json()
    assert body["count"] == 4
    assert len(body["results"]) == 3
    sql = [q["sql"].upper() for q in queries.captured_queries]
    assert not [q for q in sql if "COUNT(" in q]
    assert [q for q in sql if "MPAI_HISTORYCOUNT" in q]


def test_a_page_past_the_end_is_still_empty(user):
    turn(user)
    body = client_for(user).get(URL, {"page": 5, "per_page": 10}).json()
    assert (body["count"], body["results"]) == (2, [])
