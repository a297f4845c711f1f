"""Parallel requests, prompt batching and background titles, over real HTTP (fake_openai)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.db import connections
from django.utils import timezone

from mpai.chat.batch import (
    BATCH_PROMPT,
    ask_batched,
    complete_many,
    group_questions,
    parse_numbered_answers,
)
from mpai.chat.titles import TITLE_INSTRUCTIONS, clean_title, default_title, generate_titles
from mpai.chat.tokens import estimate_tokens
from mpai.exceptions import ProviderAuthError, ProviderBadRequest, ProviderError
from mpai.models import Conversation, Message
from mpai.providers.base import ChatRequest, Completion
from mpai.providers.openai import OpenAIProvider
from mpai.tasks import generate_conversation_titles

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

# A safety net only: no assertion depends on how long anything takes.
WAIT_S = 10.0


def _options(fake_openai: FakeOpenAI) -> dict[str, Any]:
    return {
        "base_url": fake_openai.base_url,
        "backoff_initial": 0.001,
        "backoff_max": 0.01,
        "backoff_jitter": 0,
    }


@pytest.fixture
def use_fake(settings: Any, fake_openai: FakeOpenAI) -> FakeOpenAI:
    """Point ``MPAI["PROVIDER"]`` at the fake server; FAST_MODEL is "fake-fast"."""
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": _options(fake_openai),
        },
        "FAST_MODEL": "fake-fast",
    }
    return fake_openai


def _requests(n: int) -> list[ChatRequest]:
    # The fake server echoes the request's model in its reply: it tells the slots apart.
    return [
        ChatRequest(model=f"m{i}", messages=[{"role": "user", "content": f"question {i}"}])
        for i in range(n)
    ]


def _user_content(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


# --- complete_many --------------------------------------------------------------------


class GatedProvider(OpenAIProvider):
    """Real HTTP; records the peak number of ``complete`` calls in flight.

    Each call waits until ``gate`` calls are in flight together before it sends its
    request, so calls made one after another never pass the gate (``gave_up`` is set
    after WAIT_S instead, and the test fails on it).
    """

    def __init__(self, *, gate: int, **options: Any) -> None:
        super().__init__(**options)
        self.gate = gate
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0
        self.full = threading.Event()
        self.gave_up = False

    def complete(self, request: ChatRequest) -> Completion:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if self.in_flight >= self.gate:
                self.full.set()
        try:
            if not self.full.wait(WAIT_S):
                self.gave_up = True
                self.full.set()
            return super().complete(request)
        finally:
            with self.lock:
                self.in_flight -= 1


class ReversedProvider(OpenAIProvider):
    """Real HTTP; call ``i`` of ``n`` returns only after call ``i + 1`` returned, so the
    replies finish in reverse order."""

    def __init__(self, *, n: int, **options: Any) -> None:
        super().__init__(**options)
        self.done = {i: threading.Event() for i in range(n)}
        self.finish_order: list[int] = []

    def complete(self, request: ChatRequest) -> Completion:
        index = int(request.model.removeprefix("m"))
        result = super().complete(request)
        later = self.done.get(index + 1)
        if later is not None:
            assert later.wait(WAIT_S)
        self.finish_order.append(index)
        self.done[index].set()
        return result


class BrokenProvider(OpenAIProvider):
    """Real HTTP, except that the request for model "m1" hits a bug."""

    def complete(self, request: ChatRequest) -> Completion:
        if request.model == "m1":
            raise RuntimeError("provider bug")
        return super().complete(request)


def test_complete_many_returns_results_in_input_order(fake_openai: FakeOpenAI) -> None:
    fake_openai.json_reply("An answer.")
    provider = ReversedProvider(n=4, **_options(fake_openai))

    results = complete_many(_requests(4), provider=provider, max_concurrency=4)

    assert provider.finish_order == [3, 2, 1, 0]
    assert [r.model for r in results if isinstance(r, Completion)] == ["m0", "m1", "m2", "m3"]
    assert all(isinstance(r, Completion) and r.text == "An answer." for r in results)
    assert len(fake_openai.requests) == 4


def test_complete_many_runs_concurrently_and_bounds_requests_in_flight(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.json_reply("ok")
    provider = GatedProvider(gate=3, **_options(fake_openai))

    results = complete_many(_requests(8), provider=provider, max_concurrency=3)

    assert not provider.gave_up, "three requests were never in flight together"
    assert provider.peak == 3
    assert [r.model for r in results if isinstance(r, Completion)] == [f"m{i}" for i in range(8)]
    assert sorted(b["model"] for b in fake_openai.requests) == sorted(f"m{i}" for i in range(8))


def test_complete_many_defaults_to_the_concurrency_setting(
    settings: Any, fake_openai: FakeOpenAI
) -> None:
    settings.MPAI = {**settings.MPAI, "BATCH_MAX_CONCURRENCY": 2}
    fake_openai.json_reply("ok")
    provider = GatedProvider(gate=2, **_options(fake_openai))

    complete_many(_requests(5), provider=provider)

    assert not provider.gave_up
    assert provider.peak == 2


def test_complete_many_uses_the_configured_provider(use_fake: FakeOpenAI) -> None:
    use_fake.json_reply("From settings.")

    results = complete_many(_requests(2))

    assert [r.text for r in results if isinstance(r, Completion)] == ["From settings."] * 2
    assert len(use_fake.requests) == 2


def test_one_failure_keeps_its_slot_and_loses_no_other_result(use_fake: FakeOpenAI) -> None:
    use_fake.json_reply("fine")
    use_fake.respond_error(400, "bad request", times=1)

    results = complete_many(_requests(3), max_concurrency=1)

    assert isinstance(results[0], ProviderBadRequest)
    assert results[0].status == 400
    assert [(r.model, r.text) for r in results[1:] if isinstance(r, Completion)] == [
        ("m1", "fine"),
        ("m2", "fine"),
    ]


def test_one_failure_among_concurrent_requests_loses_no_other(use_fake: FakeOpenAI) -> None:
    use_fake.json_reply("fine")
    use_fake.respond_error(400, "bad request", times=1)

    results = complete_many(_requests(6), max_concurrency=3)

    errors = [i for i, r in enumerate(results) if isinstance(r, ProviderError)]
    assert len(errors) == 1
    assert isinstance(results[errors[0]], ProviderBadRequest)
    for i, result in enumerate(results):
        if i not in errors:
            assert isinstance(result, Completion)
            assert (result.model, result.text) == (f"m{i}", "fine")
    assert len(use_fake.requests) == 6


def test_an_unexpected_provider_exception_becomes_an_error_in_its_slot(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.json_reply("fine")
    provider = BrokenProvider(**_options(fake_openai))

    results = complete_many(_requests(3), provider=provider, max_concurrency=3)

    assert isinstance(results[1], ProviderError)
    assert isinstance(results[1].__cause__, RuntimeError)
    assert [r.model for r in (results[0], results[2]) if isinstance(r, Completion)] == [
        "m0",
        "m2",
    ]


def test_complete_many_of_nothing_sends_nothing(use_fake: FakeOpenAI) -> None:
    assert complete_many([]) == []
    assert use_fake.requests == []


def test_complete_many_refuses_a_concurrency_below_one(use_fake: FakeOpenAI) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        complete_many(_requests(1), max_concurrency=0)


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. Paris\n2. Berlin\n3. Rome", ["Paris", "Berlin", "Rome"]),
        ("1) Paris\n2) Berlin\n3) Rome", ["Paris", "Berlin", "Rome"]),
        ("**1.** Paris\n**2.** Berlin\n**3.** Rome", ["Paris", "Berlin", "Rome"]),
        ("**1. Paris**\n**2. Berlin**\n**3. Rome**", ["Paris", "Berlin", "Rome"]),
        ("### 1. Paris\n### 2. Berlin\n### 3. Rome", ["Paris", "Berlin", "Rome"]),
        ("Answer 1: Paris\nAnswer 2: Berlin\nAnswer 3: Rome", ["Paris", "Berlin", "Rome"]),
        ("(1) Paris\n[2] Berlin\n3: Rome", ["Paris", "Berlin", "Rome"]),
        ("Here are the answers:\n\n1. Paris\n2. Berlin\n3. Rome\n", ["Paris", "Berlin", "Rome"]),
        (
            "1. Paris is the capital.\n   It is on the Seine.\n\n2.\nBerlin\n3. Rome",
            ["Paris is the capital.\nIt is on the Seine.", "Berlin", "Rome"],
        ),
        (
            "1. Steps:\n   1. boil water\n   2. add pasta\n2. 1.5 kg\n3. Rome",
            ["Steps:\n1. boil water\n2. add pasta", "1.5 kg", "Rome"],
        ),
        (
            "1. Use:\n```\n2. not an answer\n```\n2. Berlin\n3. Rome",
            ["Use:\n```\n2. not an answer\n```", "Berlin", "Rome"],
        ),
        ("1. Paris\n3. Rome", ["Paris", None, "Rome"]),
        ("1. Paris\n2.\n3. Rome", ["Paris", None, "Rome"]),
        ("1. Paris\n2. Berlin\n3. Rome\n4. Oslo", ["Paris", "Berlin", "Rome"]),
        ("1. Paris\n2024: a year\n2. Berlin\n3. Rome", ["Paris\n2024: a year", "Berlin", "Rome"]),
        # A top-level list restarting inside answer 2: where answer 2 ends is unknown.
        ("1. Paris\n2. Do this:\n1. a\n2. b\n3. Rome", ["Paris", None, None]),
        ("I cannot answer these.", [None, None, None]),
        ("", [None, None, None]),
    ],
)
def test_parse_numbered_answers(text: str, expected: list[str | None]) -> None:
    assert parse_numbered_answers(text, 3) == expected


def test_group_questions_bounds_count_and_tokens() -> None:
    def estimator(text: str) -> int:
        return len(text)

    assert group_questions(["a"] * 5, max_questions=2, max_tokens=100, estimator=estimator) == [
        [0, 1],
        [2, 3],
        [4],
    ]
    # Each costs its length + 2: 10 + 10 fit in 25, a third does not; 40 goes alone.
    questions = ["x" * 8, "x" * 8, "x" * 8, "x" * 38, "x" * 3]
    assert group_questions(questions, max_questions=10, max_tokens=25, estimator=estimator) == [
        [0, 1],
        [2],
        [3],
        [4],
    ]


# --- ask_batched ----------------------------------------------------------------------


def test_ask_batched_packs_questions_into_ceil_n_over_max_requests(use_fake: FakeOpenAI) -> None:
    use_fake.json_reply("Sure:\n1. Paris\n2) Berlin\n**3.** Rome")
    questions = [f"q{i}" for i in range(7)]

    answers = ask_batched(questions, max_per_batch=3)

    bodies = use_fake.requests
    assert len(bodies) == 3  # ceil(7 / 3)
    contents = sorted(_user_content(b) for b in bodies)
    assert contents == sorted(
        [BATCH_PROMPT + "1. q0\n2. q1\n3. q2", BATCH_PROMPT + "1. q3\n2. q4\n3. q5", "q6"]
    )
    assert {b["model"] for b in bodies} == {"fake-fast"}
    assert [a.question for a in answers] == questions
    assert [(a.answer, a.batched, a.error) for a in answers[:6]] == [
        ("Paris", True, None),
        ("Berlin", True, None),
        ("Rome", True, None),
    ] * 2
    # A batch of one is asked plainly: its answer is the whole reply.
    assert answers[6].batched is False
    assert answers[6].answer == "Sure:\n1. Paris\n2) Berlin\n**3.** Rome"


def test_ask_batched_defaults_to_the_batch_size_setting(
    settings: Any, use_fake: FakeOpenAI
) -> None:
    settings.MPAI = {**settings.MPAI, "BATCH_MAX_QUESTIONS": 2}
    use_fake.json_reply("1. yes\n2. no")

    answers = ask_batched(["a?", "b?", "c?", "d?"])

    assert len(use_fake.requests) == 2
    assert [a.answer for a in answers] == ["yes", "no", "yes", "no"]
    assert all(a.batched for a in answers)


def test_ask_batched_splits_batches_at_the_token_bound(settings: Any, use_fake: FakeOpenAI) -> None:
    question = "one two three four five six seven eight nine ten"
    cost = estimate_tokens(question) + 2
    settings.MPAI = {**settings.MPAI, "BATCH_MAX_TOKENS": 2 * cost}
    use_fake.json_reply("1. yes\n2. no")

    answers = ask_batched([question] * 5, max_per_batch=10)

    assert len(use_fake.requests) == 3  # 2 + 2 + 1
    assert [a.batched for a in answers] == [True, True, True, True, False]


def test_missing_answers_fall_back_to_single_requests(use_fake: FakeOpenAI) -> None:
    use_fake.json_reply("1. Paris\n3. Rome")

    answers = ask_batched(
        ["Capital of France?", "Capital of Germany?", "Capital of Italy?"],
        instructions="Answer in one word.",
    )

    bodies = use_fake.requests
    assert len(bodies) == 2  # the batch, then question 2 alone
    assert _user_content(bodies[1]) == "Capital of Germany?"
    assert [b["messages"][0] for b in bodies] == [
        {"role": "system", "content": "Answer in one word."}
    ] * 2
    assert [(a.answer, a.batched) for a in answers] == [
        ("Paris", True),
        ("1. Paris\n3. Rome", False),  # the fake answers the fallback with the same text
        ("Rome", True),
    ]


def test_an_unparseable_reply_falls_back_for_every_question(use_fake: FakeOpenAI) -> None:
    use_fake.json_reply("I'd rather not.")

    answers = ask_batched(["a?", "b?", "c?", "d?"], max_per_batch=4)

    bodies = use_fake.requests
    assert len(bodies) == 5
    assert sorted(_user_content(b) for b in bodies[1:]) == ["a?", "b?", "c?", "d?"]
    assert [(a.answer, a.batched) for a in answers] == [("I'd rather not.", False)] * 4


def test_a_reply_cut_at_the_token_limit_distrusts_its_last_answer(use_fake: FakeOpenAI) -> None:
    use_fake.json_reply("1. Paris\n2. Ber", finish_reason="length")

    answers = ask_batched(["France?", "Germany?"])

    bodies = use_fake.requests
    assert len(bodies) == 2
    assert _user_content(bodies[1]) == "Germany?"
    assert [a.batched for a in answers] == [True, False]
    assert answers[0].answer == "Paris"


def test_a_failed_batch_request_falls_back_to_single_requests(use_fake: FakeOpenAI) -> None:
    use_fake.respond_error(400, "prompt rejected", times=1)
    use_fake.json_reply("Fine.")

    answers = ask_batched(["a?", "b?", "c?"])

    assert len(use_fake.requests) == 4
    assert [(a.answer, a.batched, a.error) for a in answers] == [("Fine.", False, None)] * 3


def test_an_auth_error_is_not_retried_question_by_question(use_fake: FakeOpenAI) -> None:
    use_fake.respond_error(401, "invalid api key", times=1)

    answers = ask_batched(["a?", "b?", "c?"])

    assert len(use_fake.requests) == 1
    assert all(isinstance(a.error, ProviderAuthError) for a in answers)
    assert [(a.answer, a.batched) for a in answers] == [("", True)] * 3


def test_a_failed_single_question_carries_its_error(use_fake: FakeOpenAI) -> None:
    use_fake.respond_error(400, "bad", times=1)

    (answer,) = ask_batched(["Only one?"])

    assert len(use_fake.requests) == 1
    assert isinstance(answer.error, ProviderBadRequest)
    assert (answer.answer, answer.batched) == ("", False)


def test_ask_batched_of_nothing_sends_nothing(use_fake: FakeOpenAI) -> None:
    assert ask_batched([]) == []
    assert use_fake.requests == []


# --- titles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"Berlin Weekend Plan"', "Berlin Weekend Plan"),
        ("**Title:** “Trip to Kyoto”.", "Trip to Kyoto"),
        ("# Spring travel\nSome explanation", "Spring travel"),
        ("  `Fixing   a  bug`  ", "Fixing a bug"),
        ("- Membership renewal", "Membership renewal"),
        ("'Why?'", "Why?"),
        ("***", ""),
        ("", ""),
    ],
)
def test_clean_title(answer: str, title: str) -> None:
    assert clean_title(answer) == title


def test_clean_title_cuts_at_a_word_boundary() -> None:
    assert clean_title("alpha beta gamma delta", max_chars=12) == "alpha beta"
    assert clean_title("abcdefghijklmnop", max_chars=5) == "abcde"
    assert len(clean_title("word " * 40)) <= 60


def test_default_title_matches_the_pipeline_rule() -> None:
    assert default_title("  Plan\ta   trip\n") == "Plan a trip"
    assert default_title("x" * 100) == "x" * 60


MakeConversation = Callable[..., Conversation]


@pytest.fixture
def make_conversation(user: Any) -> MakeConversation:
    """``make_conversation(first, reply=None, status="complete", title=None)``: a
    conversation as the pipeline leaves it (default title unless ``title``)."""

    def make(
        first: str, reply: str | None = None, *, status: str = "complete", title: str | None = None
    ) -> Conversation:
        conversation = Conversation.objects.create(
            owner=user, title=default_title(first) if title is None else title
        )
        Message.objects.create(conversation=conversation, owner=user, role="user", content=first)
        if reply is not None:
            Message.objects.create(
                conversation=conversation,
                owner=user,
                role="assistant",
                content=reply,
                status=status,
            )
        return conversation

    return make


@pytest.mark.django_db
def test_title_task_renames_default_titled_conversations(
    use_fake: FakeOpenAI, make_conversation: MakeConversation
) -> None:
    older = make_conversation("Where should I travel in spring?", "Try Kyoto in April.")
    newer = make_conversation(
        "Plan   a\nweekend in Berlin for me, with museums, food and a lot of other things to do",
        "Day 1: Museum Island.\nDay 2: Kreuzberg.",
    )
    renamed = make_conversation("Help me with my invoice", "Sure.", title="Invoices")
    failed = make_conversation("Hello there, who are you?", "Hel", status="error")
    unanswered = make_conversation("Is anyone here?")
    # Newest activity first: the newer conversation is question 1.
    Conversation.objects.filter(pk=older.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    stamps = dict(Conversation.objects.values_list("pk", "updated_at"))
    use_fake.json_reply('1. **"Berlin Weekend Plan"**\n2. Title: Spring travel in Kyoto.')

    assert generate_conversation_titles.delay().get() == 2

    titles = dict(Conversation.objects.values_list("pk", "title"))
    assert titles[newer.pk] == "Berlin Weekend Plan"
    assert titles[older.pk] == "Spring travel in Kyoto"
    assert titles[renamed.pk] == "Invoices"
    assert titles[failed.pk] == "Hello there, who are you?"
    assert titles[unanswered.pk] == "Is anyone here?"
    assert dict(Conversation.objects.values_list("pk", "updated_at")) == stamps

    (body,) = use_fake.requests
    assert body["model"] == "fake-fast"
    assert body["messages"][0] == {"role": "system", "content": TITLE_INSTRUCTIONS}
    content = _user_content(body)
    assert content.startswith(BATCH_PROMPT + "1. ")
    assert content.index("weekend in Berlin") < content.index("travel in spring")
    assert "Kyoto in April" in content

    # Nothing is left to title: a second run sends nothing.
    assert generate_conversation_titles.apply().get() == 0
    assert len(use_fake.requests) == 1


@pytest.mark.django_db
def test_title_task_takes_title_batch_size_newest_first(
    settings: Any, use_fake: FakeOpenAI, make_conversation: MakeConversation
) -> None:
    settings.MPAI = {**settings.MPAI, "TITLE_BATCH_SIZE": 2}
    made = [make_conversation(f"Question number {i}", f"Answer {i}") for i in range(3)]
    use_fake.json_reply("1. First title\n2. Second title")

    assert generate_conversation_titles.delay().get() == 2

    titles = [Conversation.objects.get(pk=c.pk).title for c in made]
    assert titles == ["Question number 0", "Second title", "First title"]


@pytest.mark.django_db
def test_titles_skip_failed_answers(
    use_fake: FakeOpenAI, make_conversation: MakeConversation
) -> None:
    conversation = make_conversation("Tell me a joke", "Why did the chicken...")
    use_fake.respond_error(401, "invalid api key", times=1)

    assert generate_titles() == 0
    assert Conversation.objects.get(pk=conversation.pk).title == "Tell me a joke"


class RenamingProvider(OpenAIProvider):
    """Real HTTP; while the request is out, the user renames conversation ``rename_pk``."""

    def __init__(self, *, rename_pk: int, **options: Any) -> None:
        super().__init__(**options)
        self.rename_pk = rename_pk

    def complete(self, request: ChatRequest) -> Completion:
        try:
            Conversation.objects.filter(pk=self.rename_pk).update(title="Chosen by the user")
        finally:
            if threading.current_thread() is not threading.main_thread():
                connections.close_all()
        return super().complete(request)


@pytest.mark.django_db(transaction=True)
def test_titles_never_overwrite_a_title_the_user_set_meanwhile(
    settings: Any, fake_openai: FakeOpenAI, make_conversation: MakeConversation
) -> None:
    edited = make_conversation("First question here", "First answer")
    other = make_conversation("Second question here", "Second answer")
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": f"{__name__}.RenamingProvider",
            "OPTIONS": {**_options(fake_openai), "rename_pk": edited.pk},
        },
    }
    fake_openai.json_reply("1. Model title two\n2. Model title one")

    assert generate_titles() == 1

    assert Conversation.objects.get(pk=edited.pk).title == "Chosen by the user"
    assert Conversation.objects.get(pk=other.pk).title == "Model title two"
