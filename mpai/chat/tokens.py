"""Token estimation that works offline.

The default estimator needs no download (tiktoken fetches its encodings at run time,
so it can only be a site's opt-in: set ``MPAI["TOKEN_ESTIMATOR"]`` to a callable of
your own that uses a pre-fetched cache). It slightly overestimates BPE token counts of
English text, which is the safe side for a budget.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import cast

from mpai.conf import mpai_settings

_PIECES = re.compile(r"\w+|[^\w\s]", re.UNICODE)

#: Tokens a Chat Completions message costs beyond its content (role and separators;
#: the OpenAI cookbook counts 3, plus 3 to prime the reply).
MESSAGE_OVERHEAD = 4


@functools.lru_cache(maxsize=8192)
def estimate_tokens(text: str) -> int:
    """Estimate the tokens of ``text``: a word is one token per 4 characters (at least
    one), each punctuation mark one token.

    Memoised (8,192 texts): a conversation's history is estimated again on every turn.
    """
    return sum((len(piece) + 3) // 4 for piece in _PIECES.findall(text))


def get_estimator() -> Callable[[str], int]:
    """Return the configured estimator, ``MPAI["TOKEN_ESTIMATOR"]``.

    The option is an import string (or the callable itself) that :mod:`mpai.conf`
    resolves once per configuration.

    Raises:
        ImproperlyConfigured: the import string cannot be imported.
    """
    return cast(Callable[[str], int], mpai_settings.TOKEN_ESTIMATOR)


def estimate_messages(messages: Iterable[dict[str, str]], estimator: Callable[[str], int]) -> int:
    """Estimate the prompt tokens of Chat Completions ``messages``."""
    return sum(estimator(m.get("content", "")) + MESSAGE_OVERHEAD for m in messages)
