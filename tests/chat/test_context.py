"""Context building under the token budget (CONTRACTS.md, "Context and memory")."""

from __future__ import annotations

import pytest

from mpai import signals
from mpai.chat.context import ContextBuilder, ContextRequest, Section, budget_tokens
from mpai.chat.tokens import estimate_tokens


class Recorder:
    """A lazy section provider that records its calls."""

    def __init__(self, text: str, keyword: str | None = None) -> None:
        self.text, self.keyword, self.calls = text, keyword, 0

    def __call__(self, request):
        self.calls += 1
        return self.text

    def applies(self, query: str) -> bool:
        return self.keyword is None or self.keyword in query


SECTIONS: dict[str, Recorder] = {}


def section(name):
    return SECTIONS[name]


@pytest.fixture
def mpai(settings):
    """Configure budget and sections: ``mpai(budget=..., sections={name: Recorder})``."""

    def configure(*, max_input=1000, reserve=200, sections=None):
        SECTIONS.clear()
        SECTIONS.update(sections or {})
        settings.MPAI = {
            **settings.MPAI,
            "MAX_INPUT_TOKENS": max_input,
            "REPLY_RESERVE_TOKENS": reserve,
            "SYSTEM_PROMPT": "You help.",
            "CONTEXT_SECTIONS": {name: f"tests.chat.test_context.{name}" for name in SECTIONS},
        }

    return configure


# Module-level names the import strings above resolve to.
def __getattr__(name):
    if name in SECTIONS:
        return SECTIONS[name]
    raise AttributeError(name)


def history(n, size=40):
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i} " + "word " * size}
        for i in range(n)
    ]


def build(query="hello", hist=None, **kw):
    return ContextBuilder().build(
        ContextRequest(user=None, conversation=None, query=query, **kw), hist or []
    )


def test_budget_is_max_input_minus_reply_reserve(mpai):
    mpai(max_input=1000, reserve=200)
    assert budget_tokens() == 800


def test_small_context_keeps_everything_in_order(mpai):
    mpai(sections={"user_info": Recorder("name: Ann"), "system_info": Recorder("date: today")})
    context = build("what is my plan?", history(4, size=2))
    assert context.dropped == []
    assert context.messages[0]["role"] == "system"
    system = context.messages[0]["content"]
    assert system.index("User info") < system.index("System info")
    assert [m["content"] for m in context.messages[1:-1]] == [
        m["content"] for m in history(4, size=2)
    ]
    assert context.messages[-1] == {"role": "user", "content": "what is my plan?"}
    assert context.tokens <= 0.8 * context.budget


def test_over_80_percent_drops_lowest_priority_and_oldest_history(mpai):
    mpai(
        max_input=1000,
        reserve=200,
        sections={"user_info": Recorder("name: Ann"), "system_info": Recorder("x " * 300)},
    )
    long_history = history(30, size=40)
    context = build("the question", long_history)
    assert context.tokens <= 0.8 * 800
    assert "history" in context.dropped
    kept = context.messages[1:-1]
    # The newest messages are the ones kept, in order.
    assert kept == long_history[-len(kept) :]
    assert len(kept) >= 1
    assert context.messages[-1]["content"] == "the question"


def test_history_takes_precedence_over_user_info_when_space_is_short(mpai):
    mpai(max_input=400, reserve=0, sections={"user_info": Recorder("info " * 100)})
    context = build("q", history(40, size=20))
    assert "user_info" in context.dropped
    assert "User info" not in context.messages[0]["content"]


def test_a_lower_priority_section_that_fits_is_kept_after_a_bigger_one_is_dropped(mpai):
    mpai(
        max_input=300,
        reserve=0,
        sections={"user_info": Recorder("big " * 400), "system_info": Recorder("date: today")},
    )
    context = build("q", history(10, size=2))
    assert "user_info" in context.dropped
    assert "System info" in context.messages[0]["content"]


def test_query_is_always_kept(mpai):
    mpai(max_input=300, reserve=0, sections={"user_info": Recorder("a " * 50)})
    query = "word " * 200  # alone near the whole budget
    context = build(query, history(10))
    assert context.messages[-1]["content"] == query
    assert context.messages[1:-1] == []


def test_lazy_section_is_loaded_only_when_the_query_needs_it(mpai):
    site = Recorder("memberships: gold", keyword="membership")
    mpai(sections={"site_data": site})
    build("what time is it?")
    assert site.calls == 0
    context = build("when does my membership renew?")
    assert site.calls == 1
    assert "memberships: gold" in context.messages[0]["content"]


def test_a_failing_section_is_left_out(mpai, caplog):
    class Broken(Recorder):
        def __call__(self, request):
            raise RuntimeError("down")

    mpai(sections={"user_info": Broken("x"), "system_info": Recorder("date")})
    context = build("q")
    assert "System info" in context.messages[0]["content"]
    assert "User info" not in context.messages[0]["content"]
    assert "down" in caplog.text


def test_context_building_receivers_may_edit_sections(mpai):
    mpai()

    def add_offer(sender, context, request, **kwargs):
        context.sections.append(Section("offer", priority=4, text="20% off today"))

    signals.context_building.connect(add_offer)
    try:
        context = build("q")
    finally:
        signals.context_building.disconnect(add_offer)
    assert "## Offer\n20% off today" in context.messages[0]["content"]


def test_default_estimator_is_offline_and_monotonic():
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello") == 2
    assert estimate_tokens("hello, world!") < estimate_tokens("hello, world! and more words")
