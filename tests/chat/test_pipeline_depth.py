"""The pipeline's deeper rules: response cache, model choice, rate limit, context
sections, user-context caching, live memory (issue 4), with the provider over real
HTTP (tests/fake_openai.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from mpai import signals
from mpai.chat.pipeline import ChatPipeline
from mpai.exceptions import MessageTooLong, RateLimited
from mpai.models import Conversation, Message
from mpai.signals import membership_changed
from tests.chat.turning import drive

pytestmark = pytest.mark.django_db


@pytest.fixture
def http_pipeline(settings, fake_openai):
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": {
                "base_url": fake_openai.base_url,
                "backoff_initial": 0.001,
                "backoff_jitter": 0,
            },
        },
        "MODEL": "capable-model",
        "FAST_MODEL": "fast-model",
    }
    return ChatPipeline()


@pytest.fixture
def seen_contexts():
    seen: list[dict] = []

    def receiver(messages, model, **kwargs):
        seen.append({"messages": messages, "model": model})

    signals.context_built.connect(receiver)
    yield seen
    signals.context_built.disconnect(receiver)


def chat(pipeline, user, content, **kwargs):
    deltas: list[str] = []
    events = pipeline.stream(user=user, content=content, **kwargs)
    result = drive(events, deltas.append)
    return events.turn, result, deltas


def test_identical_request_is_served_from_the_response_cache(http_pipeline, fake_openai, user):
    fake_openai.stream_reply(["Opening ", "hours ", "are ", "9 ", "to ", "5."], usage=(30, 6))
    api_calls = []

    def on_api(sender, trace, **kwargs):
        api_calls.append(trace.request_id)

    signals.api_request_sent.connect(on_api)
    try:
        _, _first, _ = chat(http_pipeline, user, "What are your opening hours?")
        turn, second, deltas = chat(ChatPipeline(), user, "What are your opening hours?")
    finally:
        signals.api_request_sent.disconnect(on_api)
    assert len(fake_openai.requests) == 1
    assert len(api_calls) == 1  # the cached reply sent no api_* signals
    assert second.cached is True
    assert turn.trace.cached is True
    assert "".join(deltas) == "Opening hours are 9 to 5."
    assert len(deltas) >= 1
    saved = Message.objects.get(pk=second.message.pk)
    assert saved.cached is True
    assert saved.content == "Opening hours are 9 to 5."
    assert (saved.prompt_tokens, saved.completion_tokens) == (30, 6)
    assert second.timings_ms["api_wait"] == 0


def test_cache_can_be_switched_off_per_request(http_pipeline, fake_openai, user):
    fake_openai.stream_reply(["Same ", "answer."])
    chat(http_pipeline, user, "What is the refund policy?")
    _, result, _ = chat(ChatPipeline(), user, "What is the refund policy?", use_cache=False)
    assert len(fake_openai.requests) == 2
    assert result.cached is False


def test_error_and_partial_replies_are_not_cached(http_pipeline, fake_openai, user):
    fake_openai.stream_then_error(["Half"], "boom")
    chat(http_pipeline, user, "Tell me about plans")
    fake_openai.stream_reply(["Full ", "answer."])
    _, result, _ = chat(ChatPipeline(), user, "Tell me about plans")
    assert result.cached is False
    assert len(fake_openai.requests) == 2


def test_short_simple_requests_use_the_fast_model(http_pipeline, fake_openai, user):
    chat(http_pipeline, user, "Hi, what time do you open?")
    chat(http_pipeline, user, "Please compare the gold and silver plans for me")
    assert [r["model"] for r in fake_openai.requests] == ["fast-model", "capable-model"]


def test_rate_limit_rejects_with_retry_after_and_saves_nothing(settings, user):
    settings.MPAI = {
        **settings.MPAI,
        "RATE_LIMIT": {"CAPACITY": 2, "REFILL_RATE": 0.01, "KEY_PREFIX": f"rl-test-{user.pk}:"},
    }
    pipeline = ChatPipeline()
    chat(pipeline, user, "one", client_id="a")
    chat(pipeline, user, "two")
    with pytest.raises(RateLimited) as excinfo:
        pipeline.stream(user=user, content="three")
    assert excinfo.value.code == "rate_limited"
    assert 0 < excinfo.value.retry_after <= 100
    assert Message.objects.filter(content="three").count() == 0
    # A resend of an earlier client_id counts too: each one may wait for a reply, so
    # unlimited resends could tie up the process.
    with pytest.raises(RateLimited):
        pipeline.stream(user=user, content="one", client_id="a")


def test_query_alone_over_the_budget_is_too_long(settings, user):
    settings.MPAI = {**settings.MPAI, "MAX_INPUT_TOKENS": 120, "REPLY_RESERVE_TOKENS": 20}
    with pytest.raises(MessageTooLong):
        ChatPipeline().stream(user=user, content="word " * 200)
    assert not Message.objects.exists()


def test_site_data_is_loaded_only_for_membership_questions(http_pipeline, user, seen_contexts):
    user.groups.add(Group.objects.create(name="Gold members"))
    chat(http_pipeline, user, "What time is it in Paris?")
    chat(http_pipeline, user, "When does my membership renew?")
    first, second = (c["messages"][0]["content"] for c in seen_contexts)
    assert "Site data" not in first
    assert "Site data" in second
    assert "Gold members" in second


def test_current_page_goes_into_the_context(http_pipeline, user, seen_contexts):
    chat(
        http_pipeline,
        user,
        "What is this page?",
        page={"url": "https://x.test/pricing", "title": "Pricing"},
    )
    system = seen_contexts[0]["messages"][0]["content"]
    assert "Current page" in system
    assert "https://x.test/pricing" in system


def test_user_context_is_cached_and_invalidated_on_save_and_membership_change(
    http_pipeline, user, seen_contexts
):
    user.first_name = "Ann"
    user.save()
    chat(http_pipeline, user, "hello 1")
    # A change that bypasses save() is not seen while the cache entry lives ...
    type(user).objects.filter(pk=user.pk).update(first_name="Bea")
    chat(http_pipeline, user, "hello 2")
    # ... and is seen after the site reports a membership change.
    membership_changed.send(sender=None, user=user)
    chat(http_pipeline, user, "hello 3")
    user.refresh_from_db()
    user.first_name = "Cy"
    user.save()
    chat(http_pipeline, user, "hello 4")
    names = [c["messages"][0]["content"] for c in seen_contexts]
    assert "Ann" in names[0]
    assert "Ann" in names[1]
    assert "Bea" in names[2]
    assert "Cy" in names[3]


def test_live_memory_is_used_and_dropped_after_inactivity(
    http_pipeline, user, settings, seen_contexts
):
    turn, _, _ = chat(http_pipeline, user, "first")
    conversation = Conversation.objects.get(pk=turn.conversation.pk)
    # A message saved behind the pipeline's back (another device, say).
    Message.objects.create(conversation=conversation, owner=user, role="user", content="side note")
    chat(http_pipeline, user, "second", conversation_id=conversation.pk)
    assert "side note" not in [m["content"] for m in seen_contexts[-1]["messages"]]
    settings.MPAI = {**settings.MPAI, "MEMORY_IDLE_SECONDS": 0}
    chat(http_pipeline, user, "third", conversation_id=conversation.pk)
    assert "side note" in [m["content"] for m in seen_contexts[-1]["messages"]]


def test_two_connections_on_one_conversation_see_each_others_turns(
    http_pipeline, user, seen_contexts
):
    tab_a, tab_b = http_pipeline, ChatPipeline()
    turn, _, _ = chat(tab_a, user, "from tab A")
    conversation_id = turn.conversation.pk
    chat(tab_b, user, "from tab B", conversation_id=conversation_id)
    chat(tab_a, user, "A again", conversation_id=conversation_id)
    contents = [m["content"] for m in seen_contexts[-1]["messages"]]
    assert "from tab A" in contents
    assert "from tab B" in contents


def test_a_connections_memory_is_reloaded_when_the_conversation_moved_on(
    http_pipeline, user, seen_contexts
):
    from mpai.chat.history_cache import delete_cached_history

    tab_a, tab_b = http_pipeline, ChatPipeline()
    turn, _, _ = chat(tab_a, user, "from tab A")
    conversation_id = turn.conversation.pk
    chat(tab_b, user, "from tab B", conversation_id=conversation_id)
    # The shared cached context expired (15 minutes): tab A's live memory is older
    # than the conversation, so it is read again from the database.
    delete_cached_history(Conversation.objects.get(pk=conversation_id))
    chat(tab_a, user, "A again", conversation_id=conversation_id)
    assert "from tab B" in [m["content"] for m in seen_contexts[-1]["messages"]]
