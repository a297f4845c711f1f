"""Model choice (simple queries go to a cheaper model; README, "The chat pipeline").

A request under ``MPAI["FAST_MODEL_MAX_TOKENS"]`` prompt tokens (1,000) whose query
matches none of ``MPAI["COMPLEXITY_RULES"]`` goes to ``FAST_MODEL``; any other to
``MODEL``.
"""

from __future__ import annotations

import functools
import re

from mpai.conf import mpai_settings


@functools.cache
def _compile(rules: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(rule, re.IGNORECASE) for rule in rules)


def is_complex(query: str) -> bool:
    """Return True when a complexity rule matches ``query``."""
    return any(p.search(query) for p in _compile(tuple(mpai_settings.COMPLEXITY_RULES)))


def choose_model(*, query: str, prompt_tokens: int) -> str:
    """Return the model name for a request of ``prompt_tokens`` tokens asking ``query``."""
    if prompt_tokens < mpai_settings.FAST_MODEL_MAX_TOKENS and not is_complex(query):
        return str(mpai_settings.FAST_MODEL)
    return str(mpai_settings.MODEL)
