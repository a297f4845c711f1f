"""The pipeline's seam: a TurnStream of typed events, with a thread-safe cancel()."""

from __future__ import annotations

import gc
import threading

import pytest

from mpai.chat.pipeline import ChatPipeline
from mpai.chat.turns import Delta, Finished, Started
from mpai.exceptions import InvalidMessage
from mpai.models import Message
from mpai.providers.offline import OfflineProvider
from tests.waiting import wait_until

REPLY = "one two three four five six seven eight nine ten"


def pipeline(**options) -> ChatPipeline:
    options.setdefault("first_token_ms", 0)
    options.setdefault("tokens_per_second", 0)
    return ChatPipeline(OfflineProvider(reply=REPLY, **options))


@pytest.mark.django_db
def test_events_come_started_deltas_then_one_finished(user):
    events = list(pipeline().stream(user=user, content="hi"))
    assert isinstance(events[0], Started)
    assert all(isinstance(e, Delta) for e in events[1:-1])
    assert isinstance(events[-1], Finished)
    result = events[-1].result
    assert "".join(e.text for e in events[1:-1]) == REPLY == result.message.content
    assert events[0].message_id == result.message.pk
    assert events[0].conversation_id == result.conversation_id
    assert events[0].user_message_id == result.user_message_id


@pytest.mark.django_db
def test_validation_errors_raise_before_any_event_and_save_nothing(user):
    with pytest.raises(InvalidMessage):
        pipeline().stream(user=user, content="  ")
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_cancel_before_started_ends_in_one_cancelled_finished(user):
    events = pipeline().stream(user=user, content="hi")
    events.cancel()
    seen = list(events)
    assert [type(e) for e in seen] == [Started, Finished]
    result = seen[-1].result
    assert result.status == "cancelled"
    assert Message.objects.get(pk=result.message.pk).status == "cancelled"


@pytest.mark.django_db
def test_cancel_mid_stream_from_another_thread_saves_the_partial_text(user):
    events = pipeline(tokens_per_second=100).stream(user=user, content="hi")
    texts = []
    finished = []
    for event in events:
        if isinstance(event, Delta):
            texts.append(event.text)
            if len(texts) == 2:
                threading.Thread(target=events.cancel).start()
        elif isinstance(event, Finished):
            finished.append(event.result)
    assert len(finished) == 1
    assert finished[0].status == "cancelled"
    saved = Message.objects.get(pk=finished[0].message.pk)
    assert saved.content == "".join(texts)
    assert 2 <= len(texts) < len(REPLY.split())


@pytest.mark.django_db
def test_cancel_after_finished_changes_nothing(user):
    events = pipeline().stream(user=user, content="hi")
    result = [e for e in events if isinstance(e, Finished)][-1].result
    events.cancel()
    assert Message.objects.get(pk=result.message.pk).status == "complete"


@pytest.mark.django_db(transaction=True)  # finished on a background thread
def test_a_stream_abandoned_without_being_drained_still_finishes_and_saves(user):
    events = pipeline(tokens_per_second=200).stream(user=user, content="hi")
    message_id = events.turn.assistant_message.pk
    assert isinstance(next(events), Started)
    assert isinstance(next(events), Delta)
    del events  # dropped mid-reply: not a cancel
    gc.collect()
    wait_until(lambda: Message.objects.get(pk=message_id).status == "complete", timeout=10)
    assert Message.objects.get(pk=message_id).content == REPLY


@pytest.mark.django_db(transaction=True)
def test_a_stream_never_read_at_all_still_finishes_and_saves(user):
    events = pipeline().stream(user=user, content="hi")
    message_id = events.turn.assistant_message.pk
    events.close()
    wait_until(lambda: Message.objects.get(pk=message_id).status == "complete", timeout=10)


@pytest.mark.django_db
def test_complete_drains_the_stream_and_returns_the_result(user):
    result = pipeline().complete(user=user, content="hi")
    assert result.status == "complete"
    assert result.message.content == REPLY
