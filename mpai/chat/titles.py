"""Conversation titles written by the model, in the background and in batches.

A new conversation is titled with the start of its first message (the pipeline sets
``" ".join(content.split())[:TITLE_LENGTH]``, see :func:`default_title`). Once it has a
complete reply, :func:`generate_titles` (run by the Celery task
``mpai.generate_conversation_titles``) asks the fast model for a short title, many
conversations per request (:func:`mpai.chat.batch.ask_batched`, request
batching), and saves it unless the title changed meanwhile.

No model field marks a default title: a conversation still has one when its title
equals :func:`default_title` of its first user message.
"""

from __future__ import annotations

import logging
import re

from django.db.models import OuterRef, Q, Subquery
from django.db.models.functions import Left

from mpai.chat.batch import ask_batched
from mpai.conf import mpai_settings
from mpai.models import Conversation, Message

logger = logging.getLogger(__name__)

__all__ = ["TITLE_INSTRUCTIONS", "clean_title", "default_title", "generate_titles"]

#: The system message of the title requests.
TITLE_INSTRUCTIONS = (
    "You name chat conversations. For each conversation you are shown, reply with a short, "
    "specific title of at most six words, in the language of the conversation: plain text, "
    "no quotes, no markdown, no final period."
)

#: Characters of the first user message and of the first reply shown to the model.
QUESTION_USER_CHARS = 300
QUESTION_REPLY_CHARS = 200

# Every character str.split() splits on, but the plain space: a first message holding one
# (or a double, leading or trailing space) has a default title that differs from its
# plain prefix, so the SQL prefilter lets it through for the exact check in Python.
_SPACES = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and c != " ")
_IRREGULAR_SPACE = f"[{_SPACES}]|  |^ | $"

_MARKUP = re.compile(r"\*\*|__|`")
_LEAD = re.compile(r"^\s*(?:#{1,6}\s*|[-*+>]\s+|\d{1,3}[.)]\s+)*")
_LABEL = re.compile(r"^(?:conversation\s+)?title\s*[:\-–—]\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’«»„‚‹›*_"


def default_title(content: str) -> str:
    """Return the title the pipeline gives a conversation started with ``content``.

    Whitespace runs become one space; the result is cut to ``MPAI["TITLE_LENGTH"]``
    characters (60).
    """
    return " ".join(content.split())[: mpai_settings.TITLE_LENGTH]


def clean_title(text: str, *, max_chars: int | None = None) -> str:
    """Turn a model's answer into a title: one plain line of at most ``max_chars``.

    Keeps the first non-empty line; drops markdown (bold, code, heading and list marks),
    a leading ``Title:``, surrounding quotes and a final ``.``, ``,``, ``;`` or ``:``;
    collapses whitespace; cuts a longer title at the last word boundary that fits.

    Args:
        max_chars: default ``MPAI["TITLE_MAX_CHARS"]`` (60), never more than the
            ``Conversation.title`` column (200).

    Returns:
        The title, or "" when nothing is left.
    """
    column = Conversation._meta.get_field("title").max_length or 200
    limit = max(1, min(max_chars or mpai_settings.TITLE_MAX_CHARS, column))
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = _MARKUP.sub("", line)
    line = _LABEL.sub("", _LEAD.sub("", line))
    line = " ".join(line.split()).strip(_QUOTES + " ").rstrip(".,;:").strip(_QUOTES + " ")
    if len(line) > limit:
        cut = line[: limit + 1]
        line = cut.rsplit(" ", 1)[0] if " " in cut.strip() else line[:limit]
        line = line[:limit].rstrip(" ,;:-–—")
    return line


def _shorten(text: str, chars: int) -> str:
    flat = " ".join(text.split())
    if len(flat) <= chars:
        return flat
    cut = flat[:chars].rsplit(" ", 1)[0] if " " in flat[:chars] else flat[:chars]
    return cut + "…"


def _question(first_user: str, first_reply: str) -> str:
    user = _shorten(first_user, QUESTION_USER_CHARS)
    reply = _shorten(first_reply, QUESTION_REPLY_CHARS)
    return f'The user wrote: "{user}" The assistant replied: "{reply}"'


def _untitled(limit: int | None) -> list[tuple[int, str, str, str]]:
    """``(pk, title, first user message, first complete reply)`` of conversations that
    still carry their default title, most recently active first, at most ``limit``."""
    messages = Message.objects.filter(conversation=OuterRef("pk")).order_by("created_at", "id")
    first_user = messages.filter(role=Message.Role.USER).values("content")[:1]
    first_reply = messages.filter(
        role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE
    ).values("content")[:1]
    # SQL keeps the titles equal to the plain prefix of the first message, and first
    # messages whose whitespace the default title normalised; Python decides exactly.
    candidates = (
        Conversation.objects.annotate(
            first_user=Subquery(first_user), first_reply=Subquery(first_reply)
        )
        .filter(first_reply__isnull=False)
        .filter(
            Q(title=Left("first_user", mpai_settings.TITLE_LENGTH))
            | Q(first_user__regex=_IRREGULAR_SPACE)
        )
        .order_by("-updated_at", "-id")
        .values_list("pk", "title", "first_user", "first_reply")
    )
    found: list[tuple[int, str, str, str]] = []
    for pk, title, user_text, reply_text in candidates.iterator(chunk_size=200):
        if title == default_title(user_text):
            found.append((pk, title, user_text, reply_text))
            if limit is not None and len(found) >= limit:
                break
    return found


def generate_titles(*, limit: int | None = None) -> int:
    """Give model-written titles to conversations that still carry their default title.

    Picks conversations with at least one complete assistant reply whose title equals
    :func:`default_title` of their first user message, most recently active first, at
    most ``limit`` (None: all). Asks ``MPAI["FAST_MODEL"]`` for a title of each through
    :func:`mpai.chat.batch.ask_batched` (questions: the first user message and the first
    reply, shortened to :data:`QUESTION_USER_CHARS` and :data:`QUESTION_REPLY_CHARS`),
    cleans the answers (:func:`clean_title`) and saves each with one conditional
    ``UPDATE`` that matches only while the title is still the default one, so a title
    the user set meanwhile is kept. ``updated_at`` is not touched (the conversation list
    order stays). A question the provider failed on is logged and skipped; the next run
    tries again.

    README, "The chat pipeline" (conversation titles).

    Returns:
        How many conversations were renamed.

    Raises:
        django.db.DatabaseError: the database failed (provider errors are never raised).
    """
    if limit is not None and limit <= 0:
        return 0
    pending = _untitled(limit)
    if not pending:
        return 0
    answers = ask_batched(
        [_question(user_text, reply_text) for _, _, user_text, reply_text in pending],
        model=mpai_settings.FAST_MODEL,
        instructions=TITLE_INSTRUCTIONS,
    )
    updated = 0
    for (pk, old_title, _, _), answer in zip(pending, answers, strict=True):
        if answer.error is not None:
            logger.warning(
                "No title for conversation %s: %s (%s)",
                pk,
                answer.error.code,
                answer.error.provider_message or answer.error.detail,
            )
            continue
        title = clean_title(answer.answer)
        if not title or title == old_title:
            continue
        updated += Conversation.objects.filter(pk=pk, title=old_title).update(title=title)
    return updated
