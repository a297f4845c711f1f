"""Reply streams (mpai.chat.reply_stream): a reply being generated reaches its resends
through Redis in batches, the text so far at once and the rest live, each character once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.test.utils import override_settings
from django.utils import timezone
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mpai.chat import replay, reply_stream, turns
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.scoped_cache import current_site
from mpai.chat.trace import Trace
from mpai.chat.turns import ChatTurn, Delta, Finished, TurnResult
from mpai.chat.validation import validate_resume_from
from mpai.exceptions import InvalidMessage
from mpai.models import Conversation, Message
from mpai.providers.offline import OfflineProvider
from tests.redis_server import free_port
from tests.waiting import wait_until

# --- resume_from -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, 0), (0, 0), (7, 7), (10**6, 10**6)])
def test_resume_from_is_a_count_of_characters(value: object, expected: int) -> None:
    assert validate_resume_from(value) == expected


@pytest.mark.parametrize("value", [-1, True, False, 1.0, "3", [], {}])
def test_resume_from_that_is_not_a_non_negative_integer_is_refused(value: object) -> None:
    with pytest.raises(InvalidMessage, match="resume_from"):
        validate_resume_from(value)


# --- helpers -----------------------------------------------------------------------------


def exchange(user: Any, client_id: str) -> tuple[Message, Message]:
    """A saved user message and its assistant reply, ``streaming``."""
    conversation = Conversation.objects.create(owner=user, title="t")
    asked = Message.objects.create(
        conversation=conversation, owner=user, role="user", content="hi", client_id=client_id
    )
    reply = Message.objects.create(
        conversation=conversation,
        owner=user,
        role="assistant",
        status="streaming",
        heartbeat_at=timezone.now(),
    )
    return asked, reply


def writer_turn(user: Any, asked: Message, reply: Message) -> ChatTurn:
    """The turn that generates ``reply``, registered (its stream open)."""
    turn = ChatTurn(user, asked.conversation, asked, reply, Trace())
    turns.register(turn)
    return turn


def save_and_end(turn: ChatTurn, status: str = "complete") -> None:
    """What the pipeline does at the end of a turn: save, then unregister."""
    message = turn.assistant_message
    message.content = turn.reply.getvalue()
    message.status = status
    message.save(update_fields=["content", "status"])
    turns.unregister(turn)


class Resend:
    """A resend of ``client_id`` run in a thread: its deltas and result."""

    def __init__(self, user: Any, client_id: str, *, resume_from: int = 0) -> None:
        self.deltas: list[str] = []
        self.result: TurnResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(user, client_id, resume_from), daemon=True
        )
        self._thread.start()

    def _run(self, user: Any, client_id: str, resume_from: int) -> None:
        from django.db import connection

        try:
            turn = replay.find_exchange(user, client_id, Trace(), resume_from=resume_from)
            assert turn is not None
            events = replay.replay(turn)
            while True:
                try:
                    event = next(events)
                except StopIteration as stop:
                    self.result = stop.value
                    return
                assert isinstance(event, Delta)
                assert event.text
                self.deltas.append(event.text)
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()

    def text(self) -> str:
        return "".join(self.deltas)

    def join(self) -> TurnResult:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the resend did not end"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def stream_entries(reply: Message) -> list[dict[bytes, bytes]]:
    client = reply_stream.reply_redis()
    assert client is not None
    key = reply_stream.reply_stream_key(reply.pk, current_site() or "")
    return [fields for _id, fields in client.xrange(key)]


# --- publishing --------------------------------------------------------------------------


@pytest.mark.django_db
def test_deltas_go_to_redis_in_batches_with_an_expiry_and_an_end(user) -> None:
    asked, reply = exchange(user, "batches")
    turn = writer_turn(user, asked, reply)
    client = reply_stream.reply_redis()
    assert client is not None
    key = reply_stream.reply_stream_key(reply.pk, current_site() or "")
    wait_until(lambda: client.exists(key), what="the stream's start entry")
    assert 0 < client.ttl(key) <= 300  # an expiry from the first write on
    words = [f"w{i} " for i in range(2000)]
    for word in words:
        turn.reply.write(word)
    save_and_end(turn)
    wait_until(lambda: b"end" in stream_entries(reply)[-1], what="the end entry")
    entries = stream_entries(reply)
    texts = [e[b"t"].decode() for e in entries if b"t" in e]
    assert "".join(texts) == "".join(words)
    assert len(texts) < len(words) / 10  # batches, never one entry per delta
    offsets = [int(e[b"o"]) for e in entries if b"t" in e]
    assert offsets == [sum(len(t) for t in texts[:i]) for i in range(len(texts))]
    assert entries[0] == {b"s": b"1"}
    assert entries[-1] == {b"end": b"complete"}
    assert 0 < client.ttl(key) <= 300


@pytest.mark.django_db
def test_without_a_redis_nothing_is_published(user) -> None:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=caches):
        assert reply_stream.reply_redis() is None
        asked, reply = exchange(user, "embedded")
        turn = writer_turn(user, asked, reply)
        assert turn.reply.publisher is None
        assert reply_stream.follow_reply(reply.pk) is None
        turn.reply.write("still written")
        save_and_end(turn)
    assert turn.reply.getvalue() == "still written"


@pytest.mark.django_db
def test_a_redis_outage_marks_the_publisher_broken_and_the_reply_goes_on(
    user, monkeypatch, settings
) -> None:
    # A long backoff: the outage is still known when the test asks.
    limits = {**settings.MPAI["RATE_LIMIT"], "OUTAGE_BACKOFF": 600}
    settings.MPAI = {**settings.MPAI, "RATE_LIMIT": limits}
    # No retries: redis-py's default retries a refused connection with backoff (seconds).
    dead = Redis(
        port=free_port(),
        socket_connect_timeout=0.2,
        socket_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    monkeypatch.setattr(reply_stream, "reply_redis", lambda: dead)
    monkeypatch.setattr(reply_stream, "_down_until", [0.0])
    asked, reply = exchange(user, "outage")
    turn = writer_turn(user, asked, reply)
    publisher = turn.reply.publisher
    assert publisher is not None
    turn.reply.write("text ")
    wait_until(lambda: publisher.broken, what="the failed flush")
    turn.reply.write("more")  # no error, no Redis call
    assert turn.reply.getvalue() == "text more"
    assert reply_stream.open_publisher(reply.pk) is None  # Redis is known to be out
    save_and_end(turn)


# --- replays -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_resend_gets_the_text_so_far_at_once_then_the_rest_live_exactly_once(user) -> None:
    asked, reply = exchange(user, "live")
    turn = writer_turn(user, asked, reply)
    for word in ("Hello ", "there, ", "this is "):
        turn.reply.write(word)
    resend = Resend(user, "live")
    wait_until(lambda: resend.deltas, what="the text so far")
    assert resend.deltas[0] == "Hello there, this is "  # one delta: everything so far
    turn.reply.write("the rest ")
    wait_until(lambda: resend.text().endswith("the rest "), what="a live delta")
    turn.reply.write("of it.")
    save_and_end(turn)
    result = resend.join()
    saved = Message.objects.get(pk=reply.pk)
    assert resend.text() == saved.content == "Hello there, this is the rest of it."
    assert result.status == "complete"
    assert result.replayed
    assert result.error is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("resume_from", [0, 3, 6, 12, 20, 200])
def test_a_resend_with_resume_from_gets_only_the_text_after_it(user, resume_from: int) -> None:
    client_id = f"resume-{resume_from}"
    asked, reply = exchange(user, client_id)
    turn = writer_turn(user, asked, reply)
    turn.reply.write("Hello ")
    turn.reply.write("world, ")
    wait_until(lambda: len(stream_entries(reply)) >= 2, what="the first batch")
    resend = Resend(user, client_id, resume_from=resume_from)
    turn.reply.write("and more ")
    turn.reply.write("text.")
    save_and_end(turn)
    resend.join()
    saved = Message.objects.get(pk=reply.pk).content
    assert saved == "Hello world, and more text."
    assert resend.text() == saved[resume_from:]


@pytest.mark.django_db(transaction=True)
def test_a_resend_of_a_saved_reply_gets_it_after_resume_from(user) -> None:
    _asked, reply = exchange(user, "saved")
    reply.content, reply.status = "All done here.", "complete"
    reply.save()
    assert Resend(user, "saved").join().status == "complete"
    resend = Resend(user, "saved", resume_from=4)
    resend.join()
    assert resend.deltas == ["done here."]


@pytest.mark.django_db(transaction=True)
def test_without_its_stream_a_resend_waits_for_the_save(user) -> None:
    _asked, reply = exchange(user, "no-stream")  # no writer turn: no stream at all
    resend = Resend(user, "no-stream", resume_from=2)
    wait_until(lambda: Message.objects.filter(pk=reply.pk).exists())
    Message.objects.filter(pk=reply.pk).update(content="polled text", status="complete")
    resend.join()
    assert resend.text() == "lled text"


@pytest.mark.django_db(transaction=True)
def test_a_stream_recreated_after_it_expired_is_not_trusted(user) -> None:
    asked, reply = exchange(user, "expired")
    turn = writer_turn(user, asked, reply)
    turn.reply.write("lost beginning ")
    wait_until(lambda: len(stream_entries(reply)) >= 2, what="the first batch")
    client = reply_stream.reply_redis()
    assert client is not None
    client.delete(reply_stream.reply_stream_key(reply.pk, current_site() or ""))
    turn.reply.write("later text")
    wait_until(lambda: stream_entries(reply), what="the stream written again")
    resend = Resend(user, "expired")  # its first batch starts at 15, not 0
    turn.reply.write(".")
    save_and_end(turn)
    resend.join()
    assert resend.text() == "lost beginning later text."


@pytest.mark.django_db(transaction=True)
def test_a_stream_cut_by_a_redis_outage_ends_with_the_saved_text(user) -> None:
    asked, reply = exchange(user, "cut")
    turn = writer_turn(user, asked, reply)
    turn.reply.write("first part, ")
    resend = Resend(user, "cut")
    wait_until(lambda: resend.deltas, what="the text so far")
    publisher = turn.reply.publisher
    assert publisher is not None
    publisher.broken = True  # as after a failed flush: nothing more is published
    turn.reply.write("second part.")
    save_and_end(turn)
    resend.join()  # a quiet read finds the reply saved
    assert resend.text() == "first part, second part."


# --- the pipeline ------------------------------------------------------------------------


def slow_pipeline(reply: str) -> ChatPipeline:
    return ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=25, reply=reply))


def deltas_of(events: Iterator[Any], into: list[str]) -> TurnResult:
    """Read every event (the work after Finished too, in this thread); return the result."""
    result: TurnResult | None = None
    for event in events:
        if isinstance(event, Delta):
            into.append(event.text)
        elif isinstance(event, Finished):
            result = event.result
    assert result is not None, "no Finished"
    return result


@pytest.mark.django_db(transaction=True)
def test_a_resend_through_the_pipeline_follows_the_reply_being_generated(user) -> None:
    from django.db import connection

    text = " ".join(f"word{i}" for i in range(100))  # 100 tokens at 25/s: about 4 s
    original: list[str] = []
    done = threading.Event()
    outcome: list[TurnResult] = []

    def chat() -> None:
        try:
            with slow_pipeline(text).stream(user=user, content="hi", client_id="piped") as ev:
                outcome.append(deltas_of(ev, original))
        finally:
            done.set()
            connection.close()

    writer = threading.Thread(target=chat, daemon=True)
    writer.start()
    wait_until(lambda: len(original) >= 5, what="the first deltas")
    replayed: list[str] = []
    first_while_generating: list[bool] = []
    with ChatPipeline().stream(user=user, content="hi", client_id="piped") as events:
        assert events.replayed
        for event in events:
            if isinstance(event, Delta):
                if not replayed:
                    first_while_generating.append(not done.is_set())
                replayed.append(event.text)
            elif isinstance(event, Finished):
                assert event.result.replayed
                assert event.result.status == "complete"
    writer.join(timeout=30)
    assert first_while_generating == [True]
    assert len(replayed) > 2  # the text so far, then live batches
    saved = Message.objects.get(pk=outcome[0].message.pk).content
    assert "".join(replayed) == "".join(original) == saved == text
