"""The first provider request leaves before the exchange is saved (mpai.chat.opening),
and a client_id Redis has not seen needs no database lookup (mpai.chat.client_ids)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mpai.chat import client_ids
from mpai.chat.pipeline import ChatPipeline
from mpai.exceptions import NotAuthenticated
from mpai.models import Conversation, Message
from mpai.providers.offline import OfflineProvider, OfflineStream
from mpai.site_identity import site_identity
from tests.chat.turning import drive
from tests.waiting import wait_until

REPLY = "Early requests save the provider's wait."


class WatchingProvider(OfflineProvider):
    """Offline provider that records when its ``open_stream`` is entered."""

    def __init__(self, **options):
        super().__init__(first_token_ms=0, tokens_per_second=0, reply=REPLY, **options)
        self.opened = threading.Event()

    def open_stream(self, request):
        self.opened.set()
        return super().open_stream(request)


@pytest.fixture
def watching(transactional_db):
    """The provider, and whether the request was out when the exchange was saved (the
    save waits up to 5 s for it: a save that came first waits in vain)."""
    from django.db.models.signals import pre_save

    provider = WatchingProvider()
    out_at_save: list[bool] = []

    def on_save(sender, instance, **kwargs):
        out_at_save.append(provider.opened.wait(5))

    pre_save.connect(on_save, sender=Conversation, weak=False)
    try:
        yield provider, out_at_save
    finally:
        pre_save.disconnect(on_save, sender=Conversation)


def test_the_request_is_on_its_way_while_the_exchange_is_saved(watching, user):
    provider, out_at_save = watching
    events = ChatPipeline(provider).stream(user=user, content="Hello early")
    deltas: list[str] = []
    result = drive(events, deltas.append)
    assert out_at_save == [True]
    assert "".join(deltas) == REPLY
    assert Message.objects.get(pk=result.message.pk).content == REPLY


def recording_provider(first_token_ms: float = 10_000):
    provider = OfflineProvider(first_token_ms=first_token_ms, tokens_per_second=0, reply=REPLY)
    opened: list[OfflineStream] = []
    original = provider.open_stream

    def open_stream(request):
        stream = original(request)
        opened.append(stream)
        return stream

    provider.open_stream = open_stream  # type: ignore[method-assign]
    return provider, opened


def test_a_signed_out_session_sends_nothing_to_the_provider(transactional_db, user):
    provider, opened = recording_provider()
    with pytest.raises(NotAuthenticated):
        ChatPipeline(provider).stream(user=user, content="Still there?", authorize=lambda: None)
    assert opened == []
    assert not Message.objects.filter(owner=user).exists()
    assert not Conversation.objects.filter(owner=user).exists()


def test_a_failed_save_saves_nothing_and_drops_the_request(transactional_db, user, monkeypatch):
    from django.db import OperationalError

    provider, opened = recording_provider()

    def failing_bulk_create(objs, *args, **kwargs):
        wait_until(lambda: opened, timeout=5)  # the request is out before the save
        raise OperationalError("the connection was lost")

    monkeypatch.setattr(Message.objects, "bulk_create", failing_bulk_create)
    with pytest.raises(OperationalError):
        ChatPipeline(provider).stream(user=user, content="Hello?")
    assert not Message.objects.filter(owner=user).exists()
    assert not Conversation.objects.filter(owner=user).exists()  # rolled back
    # The request sent early is closed once open, so the provider stops at once.
    wait_until(lambda: opened[0]._closed.is_set(), timeout=5)


def test_authorize_gives_the_user_the_turn_is_saved_for(transactional_db, user):
    calls: list[int] = []

    def authorize():
        calls.append(1)
        return user

    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))
    result = drive(pipe.stream(user=user, content="Hi", authorize=authorize), lambda _: None)
    assert calls == [1]
    assert result.message.owner_id == user.pk


def test_a_new_client_id_costs_no_lookup_and_a_resend_still_replays(db, user):
    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))
    with CaptureQueriesContext(connection) as new_one:
        first = drive(pipe.stream(user=user, content="Hello", client_id="early-1"), lambda _: None)
    lookups = [
        q["sql"]
        for q in new_one.captured_queries
        if q["sql"].startswith("SELECT") and "client_id" in q["sql"]
    ]
    assert lookups == []
    again = drive(pipe.stream(user=user, content="Hello", client_id="early-1"), lambda _: None)
    assert again.replayed is True
    assert again.message.pk == first.message.pk
    assert Message.objects.filter(owner=user).count() == 2


def test_a_resend_redis_forgot_is_caught_by_the_unique_constraint(db, user):
    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))
    first = drive(pipe.stream(user=user, content="Hello", client_id="early-2"), lambda _: None)
    from django_redis import get_redis_connection

    get_redis_connection("default").delete(f"mpai:cid:{site_identity()}:{user.pk}:early-2")
    again = drive(pipe.stream(user=user, content="Hello", client_id="early-2"), lambda _: None)
    assert again.replayed is True
    assert again.message.pk == first.message.pk
    assert again.message.content == REPLY
    assert Message.objects.filter(owner=user).count() == 2


def test_claim_is_true_once_per_user_and_client_id(db, make_user):
    alice, bob = make_user("claim-alice"), make_user("claim-bob")
    assert client_ids.claim(alice, "c-1") is True
    assert client_ids.claim(alice, "c-1") is False
    assert client_ids.claim(bob, "c-1") is True  # another user's id space


def test_claim_without_redis_says_look_in_the_database(db, user, settings):
    settings.MPAI = {**settings.MPAI, "CLIENT_ID_TTL_SECONDS": 0}
    assert client_ids.claim(user, "c-2") is False
    assert client_ids.claim(user, "c-2") is False


class RecordingEvent(threading.Event):
    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return False


@pytest.mark.parametrize(("read_after_s", "expected_wait_s"), [(0.25, None), (0.05, 0.15)])
def test_the_offline_provider_counts_its_first_token_from_the_request(
    monkeypatch, read_after_s, expected_wait_s
):
    from types import SimpleNamespace

    from mpai.providers import ChatRequest, offline

    clock = [100.0]
    monkeypatch.setattr(offline, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    provider = OfflineProvider(first_token_ms=200, tokens_per_second=0, reply="One two")
    stream = provider.open_stream(ChatRequest(model="offline-1", messages=[]))
    stream._closed = recorder = RecordingEvent()
    clock[0] += read_after_s  # the caller saved the exchange meanwhile
    chunks = list(stream)
    assert "".join(c.text or "" for c in chunks) == "One two"
    if expected_wait_s is None:
        assert recorder.waits == []  # the first token was due already
    else:
        assert recorder.waits == [pytest.approx(expected_wait_s)]
