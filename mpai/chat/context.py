"""Context building under a token budget (README, "The chat pipeline").

Sections and their priorities (1 = most important): user query 1, conversation
history 2, user info 3, current page 4, site data 5, system info 6. The budget is
``MAX_INPUT_TOKENS − REPLY_RESERVE_TOKENS``. When the built context passes 80% of the
budget it is rebuilt: sections are taken in priority order while they fit in 80% of
the budget, a section that does not fit is dropped, conversation history is cut to
its newest messages that fit, and the user query is always kept.

Extension points, the Django equivalent of a WordPress ``mpai_chat_context`` filter:
``MPAI["CONTEXT_SECTIONS"]`` (name → import string of a section provider, see
``mpai.chat.sections``), ``MPAI["CONTEXT_PRIORITIES"]``, and the signal
``mpai.signals.context_building`` whose receivers may edit ``context.sections``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string

from mpai import signals
from mpai.chat.sections import render
from mpai.chat.tokens import MESSAGE_OVERHEAD, get_estimator
from mpai.conf import mpai_settings

logger = logging.getLogger(__name__)

USER_QUERY = "user_query"
HISTORY = "history"
#: The share of the budget a built context may use before it is rebuilt.
REBUILD_RATIO = 0.8


@dataclass
class ContextRequest:
    """What section providers can read."""

    user: Any
    conversation: Any
    query: str
    page: dict[str, Any] | None = None


@dataclass
class Section:
    """One part of the context: text, or for ``history`` a list of messages."""

    name: str
    priority: int
    text: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Context:
    """A built context: what goes to the provider.

    Attributes:
        sections: kept sections, priority order.
        dropped: names of sections dropped (or cut, for history) by the budget.
        tokens: estimated prompt tokens of ``messages``.
        budget: the input budget in tokens.
    """

    sections: list[Section]
    budget: int
    dropped: list[str] = field(default_factory=list)
    tokens: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)


def _provider(path: str) -> Callable[..., Any]:
    # Not cached: import_string is a sys.modules lookup, and settings may change.
    return import_string(path)


def budget_tokens() -> int:
    """Return the input budget: ``MAX_INPUT_TOKENS − REPLY_RESERVE_TOKENS`` (tokens)."""
    return int(mpai_settings.MAX_INPUT_TOKENS) - int(mpai_settings.REPLY_RESERVE_TOKENS)


class ContextBuilder:
    """Build provider messages from sections under the token budget."""

    def __init__(self, estimator: Callable[[str], int] | None = None) -> None:
        self.estimate = estimator or get_estimator()

    def sections(self, request: ContextRequest, history: list[dict[str, str]]) -> list[Section]:
        """Collect the sections; lazy providers run only when their ``applies`` says so."""
        priorities = mpai_settings.CONTEXT_PRIORITIES
        sections = [
            Section(USER_QUERY, priorities.get(USER_QUERY, 1), text=request.query),
            Section(HISTORY, priorities.get(HISTORY, 2), messages=list(history)),
        ]
        for name, path in mpai_settings.CONTEXT_SECTIONS.items():
            if not path:
                continue
            provider = _provider(path)
            applies = getattr(provider, "applies", None)
            if applies is not None and not applies(request.query):
                continue
            try:
                text = provider(request)
            except Exception:
                logger.exception("mpai context section %r failed; left out", name)
                continue
            if text:
                sections.append(Section(name, priorities.get(name, 999), text=str(text)))
        return sections

    def build(self, request: ContextRequest, history: list[dict[str, str]]) -> Context:
        """Return the context for ``request`` with ``history`` (oldest first)."""
        context = Context(self.sections(request, history), budget=budget_tokens())
        for receiver, response in signals.context_building.send_robust(
            sender=type(self), context=context, request=request
        ):
            if isinstance(response, Exception):
                logger.error(
                    "mpai context_building receiver %r raised", receiver, exc_info=response
                )
        context.sections.sort(key=lambda s: s.priority)
        context.messages = self.render(context.sections)
        context.tokens = self.count(context.messages)
        if context.tokens > REBUILD_RATIO * context.budget:
            self.fit(context, int(REBUILD_RATIO * context.budget))
        return context

    def count(self, messages: list[dict[str, str]]) -> int:
        return sum(self.estimate(m["content"]) + MESSAGE_OVERHEAD for m in messages)

    def fit(self, context: Context, limit: int) -> None:
        """Keep sections in priority order while they fit in ``limit`` tokens."""
        system = mpai_settings.SYSTEM_PROMPT
        used = self.estimate(system) + 2 * MESSAGE_OVERHEAD
        kept: list[Section] = []
        for section in context.sections:
            if section.name == USER_QUERY:
                used += self.estimate(section.text)
                kept.append(section)
            elif section.name == HISTORY:
                newest: list[dict[str, str]] = []
                for message in reversed(section.messages):
                    cost = self.estimate(message["content"]) + MESSAGE_OVERHEAD
                    if used + cost > limit:
                        break
                    newest.append(message)
                    used += cost
                if len(newest) < len(section.messages):
                    context.dropped.append(HISTORY)
                section.messages = newest[::-1]
                kept.append(section)
            else:
                cost = self.estimate(render(section.name, section.text)) + 1
                if used + cost <= limit:
                    kept.append(section)
                    used += cost
                else:
                    context.dropped.append(section.name)
        context.sections = kept
        context.messages = self.render(kept)
        context.tokens = self.count(context.messages)

    @staticmethod
    def render(sections: list[Section]) -> list[dict[str, str]]:
        """Messages: one system message (prompt + text sections), history, the query."""
        by_name = {s.name: s for s in sections}
        extra = [render(s.name, s.text) for s in sections if s.name not in (USER_QUERY, HISTORY)]
        system = "\n\n".join([mpai_settings.SYSTEM_PROMPT, *extra])
        messages = [{"role": "system", "content": system}]
        if HISTORY in by_name:
            messages += by_name[HISTORY].messages
        messages.append({"role": "user", "content": by_name[USER_QUERY].text})
        return messages
