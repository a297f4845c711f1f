"""Every turn's usage is recorded from ``request_complete`` (mpai.usage.recording)."""

from __future__ import annotations

import datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from mpai.chat.pipeline import ChatPipeline
from mpai.chat.tokens import estimate_messages, estimate_tokens
from mpai.usage.models import UsageDay
from mpai.usage.recording import on_context_built, on_turn_complete

pytestmark = pytest.mark.django_db

PRICE = {"capable-model": {"input": "2.50", "output": "10.00"}}


@pytest.fixture
def http_pipeline(configure, fake_openai):
    configure(
        PROVIDER={
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": {
                "base_url": fake_openai.base_url,
                "backoff_initial": 0.001,
                "backoff_jitter": 0,
            },
        },
        MODEL="capable-model",
        FAST_MODEL="capable-model",
        PRICES=PRICE,
    )
    return ChatPipeline()


def test_a_turn_records_the_providers_usage_model_and_cost(
    http_pipeline, fake_openai, user, adapter
):
    adapter.held[user.get_username()] = "Pro"
    fake_openai.stream_reply(["Nine ", "to ", "five."], usage=(1200, 300))
    result = http_pipeline.complete(user=user, content="When are you open?")
    assert result.status == "complete"
    row = UsageDay.objects.get(user=user)
    assert row.day == datetime.datetime.now(datetime.UTC).date()
    assert (row.model, row.plan, row.requests) == ("capable-model", "Pro", 1)
    assert (row.prompt_tokens, row.completion_tokens) == (1200, 300)
    # 1,200 × 2.50 / 1M + 300 × 10.00 / 1M
    assert row.cost == Decimal("0.006")
    assert (row.estimated_requests, row.cached_requests) == (0, 0)


def test_cached_replies_count_as_requests_with_no_tokens_and_no_cost(
    http_pipeline, fake_openai, user
):
    fake_openai.stream_reply(["Nine ", "to ", "five."], usage=(1000, 100))
    first = http_pipeline.complete(user=user, content="What are your opening hours?")
    second = http_pipeline.complete(user=user, content="What are your opening hours?")
    assert (first.cached, second.cached) == (False, True)
    row = UsageDay.objects.get(user=user)
    assert (row.requests, row.cached_requests) == (2, 1)
    assert (row.prompt_tokens, row.completion_tokens) == (1000, 100)  # the first turn's only
    assert row.cost == Decimal("0.0035")


def test_a_provider_without_usage_is_estimated_and_marked(http_pipeline, fake_openai, user):
    fake_openai.stream_reply(["Nine ", "to ", "five."], usage=None)
    result = http_pipeline.complete(user=user, content="Opening hours?", use_cache=False)
    assert result.usage is None
    row = UsageDay.objects.get(user=user)
    assert (row.requests, row.estimated_requests) == (1, 1)
    assert row.completion_tokens == estimate_tokens("Nine to five.")
    assert row.prompt_tokens > estimate_tokens("Opening hours?")  # the whole prompt
    assert row.cost > 0


def test_the_estimate_uses_the_prompt_of_context_built(configure, user):
    configure(PRICES=PRICE)
    trace = SimpleNamespace(request_id="r1", cached=False, replayed=False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    on_context_built(trace=trace, messages=messages)
    message = SimpleNamespace(
        model="capable-model", prompt_tokens=None, completion_tokens=None, content="Hello there"
    )
    on_turn_complete(trace=trace, user=user, message=message)
    row = UsageDay.objects.get(user=user)
    assert row.prompt_tokens == estimate_messages(messages, estimate_tokens)
    assert row.completion_tokens == estimate_tokens("Hello there")
    assert row.estimated_requests == 1


def test_replays_anonymous_users_and_turns_without_a_model_are_not_recorded(configure, user):
    configure()
    message = SimpleNamespace(model="m", prompt_tokens=1, completion_tokens=1, content="x")
    on_turn_complete(
        trace=SimpleNamespace(request_id="a", replayed=True), user=user, message=message
    )
    anonymous = SimpleNamespace(is_authenticated=False, pk=None)
    on_turn_complete(trace=SimpleNamespace(request_id="b"), user=anonymous, message=message)
    no_model = SimpleNamespace(model="", prompt_tokens=None, completion_tokens=None, content="")
    on_turn_complete(trace=SimpleNamespace(request_id="c"), user=user, message=no_model)
    assert not UsageDay.objects.exists()


def test_a_replayed_send_is_recorded_once(http_pipeline, fake_openai, user):
    fake_openai.stream_reply(["Fine."], usage=(10, 1))
    http_pipeline.complete(user=user, content="Hello", client_id="c-1")
    again = http_pipeline.complete(user=user, content="Hello", client_id="c-1")
    assert again.replayed
    assert UsageDay.objects.get(user=user).requests == 1


def test_a_failing_database_write_never_breaks_the_turn(
    http_pipeline, fake_openai, user, monkeypatch
):
    from mpai.usage import store

    def broken(**kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(store, "add_usage", broken)
    fake_openai.stream_reply(["Fine."], usage=(10, 1))
    assert http_pipeline.complete(user=user, content="Hello").status == "complete"
