"""The chat pipeline with the offline provider (provider-over-HTTP cases: test_pipeline_http)."""

from __future__ import annotations

import threading

import pytest

from mpai import signals
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.turns import Delta
from mpai.exceptions import ConversationNotFound, InvalidMessage, MessageTooLong
from mpai.models import Conversation, Message
from mpai.providers.offline import OfflineProvider
from tests.chat.turning import drive
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db

REPLY = "The quick brown fox jumps over the lazy dog."


def pipeline(**options) -> ChatPipeline:
    options.setdefault("first_token_ms", 0)
    options.setdefault("tokens_per_second", 0)
    options.setdefault("reply", REPLY)
    return ChatPipeline(OfflineProvider(**options))


def run_turn(pipe, user, content="Hello there", **start_kwargs):
    deltas: list[str] = []
    events = pipe.stream(user=user, content=content, **start_kwargs)
    turn = events.turn
    result = drive(events, deltas.append)
    return turn, result, deltas


def test_reply_streams_in_pieces_and_is_saved_exactly(user):
    turn, result, deltas = run_turn(pipeline(), user)
    assert len(deltas) > 5
    assert "".join(deltas) == REPLY
    saved = Message.objects.get(pk=result.message.pk)
    assert saved.content == REPLY
    assert saved.status == "complete"
    assert saved.role == "assistant"
    assert saved.finish_reason == "stop"
    assert saved.completion_tokens > 0
    assert saved.prompt_tokens > 0
    assert result.usage is not None
    assert result.usage.total_tokens == saved.prompt_tokens + saved.completion_tokens
    user_message = Message.objects.get(pk=turn.user_message.pk)
    assert (user_message.role, user_message.content) == ("user", "Hello there")


def test_new_conversation_gets_a_title_from_the_first_message(user):
    turn, _, _ = run_turn(pipeline(), user, content="  How do I   renew my membership?  ")
    assert Conversation.objects.get(pk=turn.conversation.pk).title == (
        "How do I renew my membership?"
    )


def test_history_of_the_conversation_goes_to_the_provider(user):
    pipe = pipeline()
    first, _, _ = run_turn(pipe, user, content="first question")
    seen = []

    def receiver(messages, **kwargs):
        seen.append(messages)

    signals.context_built.connect(receiver)
    try:
        run_turn(pipe, user, content="second question", conversation_id=first.conversation.pk)
    finally:
        signals.context_built.disconnect(receiver)
    roles = [(m["role"], m["content"]) for m in seen[0]]
    assert roles[0][0] == "system"
    assert roles[1:] == [
        ("user", "first question"),
        ("assistant", REPLY),
        ("user", "second question"),
    ]


def test_signals_fire_in_order_with_one_trace(user):
    calls = []

    def make(name):
        def receiver(sender, trace, user, conversation, **kwargs):
            calls.append((name, sender, trace, user, conversation))

        return receiver

    names = [
        "context_built",
        "api_request_sent",
        "api_response_received",
        "response_processed",
        "request_complete",
    ]
    receivers = [make(n) for n in names]
    for name, receiver in zip(names, receivers, strict=True):
        getattr(signals, name).connect(receiver)
    try:
        turn, result, _ = run_turn(pipeline(), user)
    finally:
        for name, receiver in zip(names, receivers, strict=True):
            getattr(signals, name).disconnect(receiver)
    assert [c[0] for c in calls] == names
    assert {c[1] for c in calls} == {ChatPipeline}
    assert {id(c[2]) for c in calls} == {id(turn.trace)}
    assert all(c[3] == user and c[4] == turn.conversation for c in calls)
    marks = turn.trace.marks
    order = [marks[n] for n in ("start", *names)]
    assert order == sorted(order)
    assert set(result.timings_ms) == {
        "context",
        "api_wait",
        "first_token",
        "generation",
        "processing",
        "total",
    }
    assert result.timings_ms["total"] >= result.timings_ms["generation"] >= 0


def test_a_receiver_that_raises_does_not_break_the_chat(user, caplog):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.api_response_received.connect(broken)
    try:
        _, result, deltas = run_turn(pipeline(), user)
    finally:
        signals.api_response_received.disconnect(broken)
    assert result.status == "complete"
    assert "".join(deltas) == REPLY
    assert "receiver bug" in caplog.text


@pytest.mark.django_db(transaction=True)  # the reply is finished on another thread
def test_an_exception_in_the_reader_of_the_stream_does_not_stop_the_reply(user):
    """A closed connection is not a cancel: the reply is saved complete."""
    pipe = pipeline()
    events = pipe.stream(user=user, content="hi")

    def read_until_the_client_goes():
        with events:
            for event in events:
                if isinstance(event, Delta):
                    raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        read_until_the_client_goes()
    reply = events.turn.assistant_message
    wait_until(lambda: Message.objects.get(pk=reply.pk).status == "complete")
    assert Message.objects.get(pk=reply.pk).content == REPLY


def test_cancel_saves_the_partial_reply_as_cancelled(user):
    pipe = pipeline(tokens_per_second=50)
    events = pipe.stream(user=user, content="hi")
    turn = events.turn
    deltas: list[str] = []

    def on_delta(text):
        deltas.append(text)
        if len(deltas) == 2:
            threading.Thread(target=turn.cancel).start()

    result = drive(events, on_delta)
    saved = Message.objects.get(pk=result.message.pk)
    assert result.status == saved.status == "cancelled"
    assert result.finish_reason is None
    assert saved.content == "".join(deltas)
    assert 2 <= len(deltas) < len(REPLY.split())


def test_another_users_conversation_is_not_found(user, make_user):
    other_turn, _, _ = run_turn(pipeline(), make_user())
    with pytest.raises(ConversationNotFound):
        pipeline().stream(user=user, content="hi", conversation_id=other_turn.conversation.pk)
    for bad in ("abc", 10**30, {"id": 1}, 999999, True, 1.0, [1]):
        with pytest.raises(ConversationNotFound):
            pipeline().stream(user=user, content="hi", conversation_id=bad)


def test_bad_input_saves_nothing(user, settings):
    settings.MPAI = {**settings.MPAI, "MAX_MESSAGE_LENGTH": 5}
    with pytest.raises(InvalidMessage):
        pipeline().stream(user=user, content="   ")
    with pytest.raises(MessageTooLong):
        pipeline().stream(user=user, content="too long")
    assert not Message.objects.exists()
    assert not Conversation.objects.exists()


def test_resend_with_the_same_client_id_replays_the_first_exchange(user):
    pipe = pipeline()
    first, _first_result, _ = run_turn(pipe, user, client_id="abc")
    again, again_result, deltas = run_turn(pipe, user, client_id="abc")
    assert again.replayed
    assert again_result.replayed
    assert again.user_message.pk == first.user_message.pk
    assert again.assistant_message.pk == first.assistant_message.pk
    assert "".join(deltas) == REPLY
    assert again_result.status == "complete"
    assert again_result.timings_ms["api_wait"] == 0
    assert Message.objects.count() == 2


def test_same_client_id_from_another_user_is_a_new_exchange(user, make_user):
    pipe = pipeline()
    run_turn(pipe, user, client_id="abc")
    other, _, _ = run_turn(pipe, make_user(), client_id="abc")
    assert not other.replayed
    assert Message.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_no_database_connection_is_held_while_the_provider_streams(user):
    """A stream lasts seconds: holding a pooled connection meanwhile starves the pool."""
    from django.db import connection

    pipe = pipeline()
    events = pipe.stream(user=user, content="hello", use_cache=False)
    held: list[bool] = []
    result = drive(events, lambda text: held.append(connection.connection is not None))
    assert held
    assert not any(held)
    assert Message.objects.get(pk=result.message.pk).content == REPLY
