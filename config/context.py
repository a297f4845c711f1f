"""The demo's context sections: the user's membership and the matching help articles.

Wired in ``config/settings.py`` through ``MPAI["CONTEXT_SECTIONS"]`` (see
``mpai.chat.sections``): mpai renders each section into the system message as a
``## <Name>`` heading and its text. The texts are plain, model-readable blocks:

- ``membership``: ``key: value`` lines (``plan``, ``price``, ``renewal``) and a
  ``benefits:`` line followed by ``- `` bullet lines.
- ``help_articles``: up to :data:`TOP_ARTICLES` articles, each a ``### <title>`` line
  and its body, best match first.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from config.membership import HELP_ARTICLES, Article, next_renewal, plan_for

if TYPE_CHECKING:
    from mpai.chat.context import ContextRequest

#: Help articles put in the context per question.
TOP_ARTICLES = 3

_WORD = re.compile(r"[a-z0-9]+")
_STOP_TEXT = (
    "a an and are as at be but by can could do does for from how i if in is it me my "
    "of on or our so that the this to was we what when where which who why will with "
    "would you your"
)
_STOP = frozenset(_STOP_TEXT.split())


def _terms(text: str) -> list[str]:
    """Lowercased words of ``text`` without common English function words."""
    return [word for word in _WORD.findall(text.lower()) if word not in _STOP]


def membership(request: ContextRequest) -> str:
    """The user's plan: name, price, renewal and benefits (see the module docstring)."""
    plan = plan_for(request.user)
    today = timezone.now().date()
    joined = getattr(request.user, "date_joined", None)
    renewal = next_renewal(plan, joined.date() if joined else today, today)
    every = "month" if plan.period_months == 1 else "year"
    lines = [
        f"plan: {plan.name}",
        f"price: {plan.price}",
        (
            f"renewal: renews automatically every {every}; next on {renewal.day} {renewal:%B %Y}"
            if renewal
            else "renewal: none, the Free plan is never billed"
        ),
        "benefits:",
        *(f"- {benefit}" for benefit in plan.benefits),
    ]
    return "\n".join(lines)


@functools.cache
def _help_index() -> tuple[list[list[str]], Any]:
    """The help centre's terms per article and their BM25 index, built once (the
    articles are constants; building it costs more than a query)."""
    from rank_bm25 import BM25Okapi

    corpus = [_terms(f"{a.title} {a.title} {a.body}") for a in HELP_ARTICLES]
    return corpus, BM25Okapi(corpus)


def matching_articles(query: str, limit: int = TOP_ARTICLES) -> list[Article]:
    """The help articles best matching ``query``, ranked by BM25 (Okapi), at most ``limit``.

    Articles are scored on their title and body; those sharing no word with the query
    are left out. Ties keep the help centre's order.

    Raises:
        ImportError: ``rank-bm25`` is not installed (the ``demo`` extra).
    """
    words = _terms(query)
    if not words:
        return []
    corpus, index = _help_index()
    scores = index.get_scores(words)
    ranked = sorted(range(len(HELP_ARTICLES)), key=lambda i: (-scores[i], i))
    query_words = set(words)
    return [HELP_ARTICLES[i] for i in ranked[:limit] if query_words.intersection(corpus[i])]


def help_articles(request: ContextRequest) -> str | None:
    """The help articles matching the user's question (see the module docstring)."""
    found = matching_articles(request.query)
    return "\n\n".join(f"### {a.title}\n{a.body}" for a in found) or None
