"""Parallel requests and prompt batching.

Two ways to get many independent answers from the provider faster:

- :func:`complete_many`, parallel requests (what PHP does with
  ``curl_multi``): send many requests at once, at
  most ``MPAI["BATCH_MAX_CONCURRENCY"]`` in flight, each result in its request's slot.
- :func:`ask_batched`, request batching:
  pack several short questions into one request, ask for numbered answers and parse them
  back. Where a simpler batcher fills an unparsed answer with "No response available for this
  question.", this module asks that question again on its own, so every question gets a
  real answer or a real error.

Requests run in worker threads of a :class:`~concurrent.futures.ThreadPoolExecutor`
(the provider's ``complete`` is blocking HTTP; the OpenAI provider's pooled session is
thread-safe). No signals are sent: these requests belong to no chat turn.
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from mpai.chat.tokens import get_estimator
from mpai.conf import mpai_settings
from mpai.exceptions import (
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from mpai.providers import ChatProvider, ChatRequest, Completion, get_provider

logger = logging.getLogger(__name__)

__all__ = [
    "BATCH_PROMPT",
    "BatchAnswer",
    "ask_batched",
    "complete_many",
    "group_questions",
    "parse_numbered_answers",
]

#: Told to the model before the numbered questions of a batched request.
BATCH_PROMPT = (
    "Answer each numbered question below on its own. Reply with the answers only, "
    "numbered like the questions and in the same order, one per question:\n"
    "1. <answer to question 1>\n"
    "2. <answer to question 2>\n"
    "and so on. Do not repeat the questions.\n\n"
    "Questions:\n"
)

#: Estimated tokens a question costs in a batch beyond its text (its number, the newline).
ITEM_OVERHEAD_TOKENS = 2

#: Errors of a batched request after which asking each question alone would only add
#: load to a provider that is refusing us (bad key, rate limit, outage after retries).
#: Other errors (a too-long context, a bad request, a timeout, a broken body) may go
#: away with a smaller request, so those questions fall back to single requests.
NO_FALLBACK_ERRORS: tuple[type[ProviderError], ...] = (
    ProviderAuthError,
    ProviderRateLimited,
    ProviderUnavailable,
)


# --- parallel requests ----------------------------------------------------------------


def complete_many(
    requests: Sequence[ChatRequest],
    *,
    provider: ChatProvider | None = None,
    max_concurrency: int | None = None,
) -> list[Completion | ProviderError]:
    """Run ``provider.complete`` for every request concurrently, a bounded number at once.

    README, "The chat pipeline" (batch and parallel requests).

    Args:
        requests: independent requests; none sees another's result.
        provider: default :func:`mpai.providers.get_provider`.
        max_concurrency: most requests in flight at once (threads); default
            ``MPAI["BATCH_MAX_CONCURRENCY"]`` (4). 1 runs them one after another in the
            calling thread.

    Returns:
        One entry per request, in input order: its :class:`Completion`, or the
        :class:`ProviderError` it ended with (after the provider's own retries). One
        failure never loses the others. An unexpected exception from a provider is
        logged and returned as a plain :class:`ProviderError` whose ``__cause__`` is it.

    Raises:
        ValueError: ``max_concurrency`` is less than 1.
    """
    limit = mpai_settings.BATCH_MAX_CONCURRENCY if max_concurrency is None else max_concurrency
    if limit < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {limit!r}")
    items = list(requests)
    if not items:
        return []
    run = partial(_complete_one, provider or get_provider())
    workers = min(limit, len(items))
    if workers == 1:
        return [run(request) for request in items]
    # A pool per call: its size is the bound, and the threads end with the call.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mpai-batch") as pool:
        return list(pool.map(run, items))


def _complete_one(provider: ChatProvider, request: ChatRequest) -> Completion | ProviderError:
    try:
        return provider.complete(request)
    except ProviderError as exc:
        return exc
    except Exception as exc:  # a provider bug must not lose the other results
        logger.exception("Provider %s failed on a parallel request", type(provider).__name__)
        error = ProviderError(provider_message=f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error


# --- prompt batching ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """The answer to one question of :func:`ask_batched`.

    Attributes:
        question: the question, as given.
        answer: the answer text, stripped ("" when ``error`` is set).
        batched: True when the answer came from (or the error hit) a request that
            carried several questions; False for questions asked on their own (a batch
            of one, or the fallback after a batch answer was missing or unparseable).
        error: the provider error that left this question unanswered, or None.
    """

    question: str
    answer: str
    batched: bool
    error: ProviderError | None = None


def ask_batched(
    questions: Sequence[str],
    *,
    provider: ChatProvider | None = None,
    model: str | None = None,
    instructions: str | None = None,
    max_per_batch: int | None = None,
    max_concurrency: int | None = None,
) -> list[BatchAnswer]:
    """Answer short, independent questions with few requests (numbered answers).

    README, "The chat pipeline" (batch and parallel requests).

    Questions are grouped in order (:func:`group_questions`): at most ``max_per_batch``
    per request and at most ``MPAI["BATCH_MAX_TOKENS"]`` estimated tokens of questions
    (``MPAI["TOKEN_ESTIMATOR"]``). A group of several becomes one request listing them
    numbered after :data:`BATCH_PROMPT`; a group of one is asked plainly. The groups
    are sent concurrently (:func:`complete_many`). Each reply is parsed with
    :func:`parse_numbered_answers`; when a reply stopped at the token limit
    (``finish_reason`` "length") its last parsed answer is distrusted. Every question
    whose answer is missing, empty or unparseable, or whose batch request failed with
    an error a smaller request may avoid (anything but :data:`NO_FALLBACK_ERRORS`), is
    then asked on its own, again concurrently.

    Args:
        questions: the questions; each should fit in a short answer.
        provider: default :func:`mpai.providers.get_provider`.
        model: default ``MPAI["FAST_MODEL"]`` (short answers need no capable model).
        instructions: a system message sent with every request (batched or not), e.g.
            what kind of answer to give; None sends no system message.
        max_per_batch: most questions per request; default ``MPAI["BATCH_MAX_QUESTIONS"]``.
        max_concurrency: as for :func:`complete_many`.

    Returns:
        One :class:`BatchAnswer` per question, in input order. Provider errors are in
        the answers, never raised.

    Raises:
        ValueError: ``max_per_batch`` or ``max_concurrency`` is less than 1.
    """
    items = list(questions)
    per_batch = mpai_settings.BATCH_MAX_QUESTIONS if max_per_batch is None else max_per_batch
    if per_batch < 1:
        raise ValueError(f"max_per_batch must be at least 1, not {per_batch!r}")
    if not items:
        return []
    provider = provider or get_provider()
    model = model or mpai_settings.FAST_MODEL
    groups = group_questions(
        items,
        max_questions=per_batch,
        max_tokens=mpai_settings.BATCH_MAX_TOKENS,
        estimator=get_estimator(),
    )
    requests = [
        _batch_request([items[i] for i in group], model, instructions)
        if len(group) > 1
        else _single_request(items[group[0]], model, instructions)
        for group in groups
    ]
    results = complete_many(requests, provider=provider, max_concurrency=max_concurrency)

    answers: dict[int, BatchAnswer] = {}
    fallback: list[int] = []
    for group, result in zip(groups, results, strict=True):
        if len(group) == 1:
            answers[group[0]] = _answer(items[group[0]], result, batched=False)
        elif isinstance(result, NO_FALLBACK_ERRORS):
            answers.update({i: BatchAnswer(items[i], "", True, result) for i in group})
        elif isinstance(result, ProviderError):
            fallback.extend(group)
        else:
            parsed = parse_numbered_answers(result.text, len(group))
            if result.finish_reason == "length":  # the last answer may be cut short
                last = max((n for n, text in enumerate(parsed) if text is not None), default=-1)
                if last >= 0:
                    parsed[last] = None
            for i, text in zip(group, parsed, strict=True):
                if text is None:
                    fallback.append(i)
                else:
                    answers[i] = BatchAnswer(items[i], text, True)

    if fallback:
        logger.info(
            "Prompt batching: %d of %d questions fall back to single requests",
            len(fallback),
            len(items),
        )
        singles = [_single_request(items[i], model, instructions) for i in fallback]
        retried = complete_many(singles, provider=provider, max_concurrency=max_concurrency)
        for i, result in zip(fallback, retried, strict=True):
            answers[i] = _answer(items[i], result, batched=False)
    return [answers[i] for i in range(len(items))]


def group_questions(
    questions: Sequence[str],
    *,
    max_questions: int,
    max_tokens: int,
    estimator: Callable[[str], int],
) -> list[list[int]]:
    """Split question indexes, in order, into groups for batched requests.

    A group holds at most ``max_questions`` questions whose estimated tokens (plus
    :data:`ITEM_OVERHEAD_TOKENS` each) add up to at most ``max_tokens``; a question over
    ``max_tokens`` alone gets a group of its own.

    Returns:
        Lists of indexes into ``questions``, covering each index once, in order.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, question in enumerate(questions):
        cost = estimator(question) + ITEM_OVERHEAD_TOKENS
        if current and (len(current) >= max_questions or used + cost > max_tokens):
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += cost
    if current:
        groups.append(current)
    return groups


def _messages(content: str, instructions: str | None) -> list[dict[str, str]]:
    system = [{"role": "system", "content": instructions}] if instructions else []
    return [*system, {"role": "user", "content": content}]


def _batch_request(questions: list[str], model: str, instructions: str | None) -> ChatRequest:
    numbered = "\n".join(f"{n}. {question}" for n, question in enumerate(questions, 1))
    return ChatRequest(model=model, messages=_messages(BATCH_PROMPT + numbered, instructions))


def _single_request(question: str, model: str, instructions: str | None) -> ChatRequest:
    return ChatRequest(model=model, messages=_messages(question, instructions))


def _answer(question: str, result: Completion | ProviderError, *, batched: bool) -> BatchAnswer:
    if isinstance(result, ProviderError):
        return BatchAnswer(question, "", batched, result)
    return BatchAnswer(question, result.text.strip(), batched)


# --- parsing numbered answers ---------------------------------------------------------

# One answer's first line: "1. x", "1) x", "1: x", "(1) x", "[1] x", with an
# optional markdown heading ("### 1. x"), bold ("**1.** x", "**1. x**") and "Answer 1: x".
# The delimiter must be followed by a space or the line's end, so "1.5 kg" is no marker.
_MARKER = re.compile(
    r"""
    ^(?P<indent>[ \t]*)
    (?:\#{1,6}[ \t]*)?
    (?P<bold>\*\*|__)?[ \t]*
    (?:(?:answer|response)[ \t]*)?
    [(\[]?(?P<number>\d{1,4})
    [.):\]]
    (?P<close>\*\*|__)?
    (?=[ \t]|$)
    [ \t]*(?P<text>.*)$
    """,
    re.IGNORECASE | re.VERBOSE,
)
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


def parse_numbered_answers(text: str, count: int) -> list[str | None]:
    """Split a reply of numbered answers into ``count`` answers.

    An answer starts at a line numbered ``1.``, ``1)``, ``1:``, ``(1)`` or ``[1]`` (also
    in bold, ``**1.**`` or ``**1. x**``, after a markdown heading mark, or as
    ``Answer 1:``) and runs to the next such line, so answers may span several lines.
    Text before the first number is ignored. Numbered lines inside code fences, or
    indented deeper than the first answer's number, belong to the answer they are in
    (a nested list). Numbers must rise: a missing number leaves that answer None; a
    top-level number that does not rise (a list restarting inside an answer) makes the
    answer it appears in, and everything after it, None, since where that answer ends
    cannot be told; an extra answer (``count + 1``) ends the last one and is ignored;
    other numbers above ``count`` are text of the answer they are in.

    Args:
        text: the model's reply.
        count: how many questions were asked (numbered 1 to ``count``).

    Returns:
        ``count`` entries, in question order: the answer (stripped, continuation lines
        dedented) or None when it is missing or empty.
    """
    found: dict[int, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    last = 0
    base_indent: int | None = None
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _MARKER.match(line)
        if match is not None:
            indent = len(match["indent"].expandtabs(4))
            number = int(match["number"])
            if base_indent is None or indent <= base_indent:
                if last < number <= count:
                    first = match["text"].rstrip()
                    bold = match["bold"]
                    if bold and not match["close"] and first.endswith(bold):
                        first = first[: -len(bold)].rstrip()  # "**1. x**"
                    current = []
                    found[number] = (first, current)
                    last = number
                    if base_indent is None:
                        base_indent = indent
                    continue
                if base_indent is not None and number <= last:
                    found.pop(last, None)
                    current = None
                    break
                if base_indent is not None and number == last + 1:  # an extra answer
                    current = None
                    continue
        if current is not None:
            current.append(line)

    answers: list[str | None] = []
    for number in range(1, count + 1):
        if number not in found:
            answers.append(None)
            continue
        first, rest = found[number]
        body = "\n".join([first, textwrap.dedent("\n".join(rest))]).strip()
        answers.append(body or None)
    return answers
