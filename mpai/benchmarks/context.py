"""Benchmark suite ``context``: building the context of a 200-message conversation.

It prints the median and p99 (µs) of context building for a conversation of
200 messages. Two shapes are measured in one run: messages that fit the budget (short
turns; no rebuild) and real replies that pass 80% of it (the rebuild path: history cut
to its newest messages that fit). The messages are the packaged offline replies
(oasst1 and arena-hard-auto, Apache-2.0). The user-info section is served from mpai's
cache (warmed first), as in steady state; no database is touched. Token estimates are
memoised per text, so a turn re-estimates only new messages: the "cold" row clears
that memo before each build (a conversation's first turn after a restart).

Run with ``python manage.py mpai_benchmark context [--iterations N]``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from mpai.benchmarks import Writer
from mpai.benchmarks._stats import median_p99, summary_row, time_us
from mpai.chat.context import ContextBuilder, ContextRequest, budget_tokens
from mpai.chat.profile import delete_user_profile, store_user_profile
from mpai.chat.tokens import estimate_tokens
from mpai.providers.offline import packaged_replies

DEFAULT_ITERATIONS = 2000
MESSAGES = 200


def conversation(long: bool) -> list[dict[str, str]]:
    """Return 200 alternating user/assistant messages, real replies when ``long``."""
    replies = packaged_replies()
    messages = []
    for i in range(MESSAGES):
        if i % 2 == 0:
            messages.append({"role": "user", "content": f"Question {i}: how does this work?"})
        else:
            text = replies[i % len(replies)] if long else f"Short answer {i}."
            messages.append({"role": "assistant", "content": text})
    return messages


def run(stdout: Writer, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Print median and p99 (µs) of ``ContextBuilder.build`` for both shapes; return one
    :func:`~mpai.benchmarks._stats.summary_row` per shape (µs)."""
    rows = []
    iterations = int(options.get("iterations") or DEFAULT_ITERATIONS)
    user = SimpleNamespace(pk=f"bench-{uuid.uuid4().hex}")
    store_user_profile(user, {"username": "bench", "name": "Bench User"})
    builder = ContextBuilder()
    query = "What are the opening hours of the support desk?"
    stdout.write(
        f"context building, {MESSAGES}-message conversation, budget {budget_tokens()} tokens, "
        f"{iterations} iterations (µs)\n"
    )
    stdout.write(f"{'shape':<28}{'median':>10}{'p99':>10}{'tokens':>9}{'history kept':>14}\n")
    try:
        shapes = (
            ("fits the budget", False, False),
            ("over 80% (rebuilt)", True, False),
            ("over 80%, cold estimates", True, True),
        )
        for label, long, cold in shapes:
            history = conversation(long)
            request = ContextRequest(user=user, conversation=None, query=query)
            context = builder.build(request, history)

            def build(
                request: ContextRequest = request, history: Any = history, cold: bool = cold
            ) -> None:
                if cold:  # every message estimated afresh, as on a conversation's first turn
                    estimate_tokens.cache_clear()
                builder.build(request, history)

            samples = time_us(build, iterations)
            median, p99 = median_p99(samples)
            kept = len(context.messages) - 2
            stdout.write(f"{label:<28}{median:>10.1f}{p99:>10.1f}{context.tokens:>9}{kept:>14}\n")
            rows.append(summary_row("context", label, samples))
    finally:
        delete_user_profile(user)
    return rows
