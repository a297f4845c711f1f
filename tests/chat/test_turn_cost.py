"""A turn's own cost: no statement or lookup whose answer is known, nothing before the
first token that can wait until after the last (README, "Performance")."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mpai.chat import history as history_module
from mpai.chat import history_cache
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.turns import Delta, Started
from mpai.models import Conversation, Message
from mpai.providers.offline import OfflineProvider
from tests.chat.turning import drive

pytestmark = pytest.mark.django_db

REPLY = "one two three"


def pipeline() -> ChatPipeline:
    return ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))


def test_both_messages_of_a_turn_are_saved_in_one_insert(user) -> None:
    with CaptureQueriesContext(connection) as queries:
        events = pipeline().stream(user=user, content="hello")
        assert isinstance(next(events), Started)
    inserts = [q["sql"] for q in queries if q["sql"].startswith('INSERT INTO "mpai_message"')]
    assert len(inserts) == 1
    drive(events)
    roles = list(Message.objects.filter(owner=user).order_by("pk").values_list("role", flat=True))
    assert roles == ["user", "assistant"]


def test_a_new_conversation_reads_no_history_and_the_next_turn_does(user, monkeypatch) -> None:
    reads: list[str] = []
    real_read, real_load = history_cache.read_cached_history, history_module.load_history

    def read(*args, **kwargs):
        reads.append("cache")
        return real_read(*args, **kwargs)

    def load(*args, **kwargs):
        reads.append("database")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(history_cache, "read_cached_history", read)
    monkeypatch.setattr(history_module, "load_history", load)
    pipe = pipeline()
    first = drive(pipe.stream(user=user, content="hello"))
    assert reads == []  # nothing could be there

    second = ChatPipeline(pipe.provider)  # another connection: it must read the history
    drive(second.stream(user=user, content="again", conversation_id=first.conversation_id))
    assert reads
    assert reads[0] == "cache"


def test_the_conversation_moves_to_the_top_when_the_reply_is_saved(user) -> None:
    events = pipeline().stream(user=user, content="hello")
    started = next(events)
    before = Conversation.objects.get(pk=started.conversation_id).updated_at
    assert isinstance(next(events), Delta)
    result = drive(events)
    after = Conversation.objects.get(pk=result.conversation_id).updated_at
    assert after > before


def test_the_response_cache_is_written_after_the_final_event(user, monkeypatch) -> None:
    from mpai.chat import response_cache

    seen: list[str] = []
    real_store = response_cache.store

    def store(*args, **kwargs):
        seen.append("store")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(response_cache, "store", store)
    order: list[str] = []
    with pipeline().stream(user=user, content="cache me") as events:
        for event in events:
            order.append(f"{type(event).__name__}:{len(seen)}")
    assert order[-1] == "Finished:0"  # the client had its final event before the write
    assert seen == ["store"]


def test_a_long_reply_of_tiny_deltas_is_held_as_text_not_as_delta_objects(user) -> None:
    # Thirty 4 MB replies of word-sized deltas once held about 1.1 GiB: every delta
    # stayed a str object (about 50 bytes of header each) in the provider and the turn.
    import tracemalloc

    reply = "a " * 100_000  # 200 KB in 100,000 deltas
    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=reply))
    events = pipe.stream(user=user, content="long", use_cache=False)
    tracemalloc.start()
    try:
        held = 0
        for event in events:
            if isinstance(event, Delta):
                held = max(held, tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert Message.objects.get(pk=events.turn.assistant_message.pk).content == reply
    assert held < 10 * len(reply)  # a few copies of the text, not 100,000 objects


def test_a_connection_keeps_the_live_memory_of_its_recent_conversations_only(
    user, monkeypatch
) -> None:
    # A connection starting conversation after conversation kept every memory (and
    # every reply in it) for its whole life (mpai_benchmark memory).
    from mpai.chat.history import ConversationHistory

    monkeypatch.setattr(ConversationHistory, "max_conversations", 3)
    pipe = pipeline()
    ids = [drive(pipe.stream(user=user, content=f"hi {i}")).conversation_id for i in range(5)]
    assert list(pipe.memories) == ids[-3:]
    # A dropped conversation comes back from the cached history or the database.
    again = drive(pipe.stream(user=user, content="and again", conversation_id=ids[0]))
    assert again.status == "complete"
    assert list(pipe.memories) == [*ids[-2:], ids[0]]
    assert [m["content"] for m in pipe.memories[ids[0]].messages][:2] == ["hi 0", REPLY]
