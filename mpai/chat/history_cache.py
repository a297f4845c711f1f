"""The cached history: a conversation's recent messages (15 minutes by default).

Shared by every connection and process of one site, so two tabs on one conversation
agree. Entries live in the ``conversation_context`` group (:mod:`mpai.chat.cache_groups`,
default 900 s) through :mod:`mpai.chat.scoped_cache`: keyed by site and conversation,
and used only when they claim this site, the conversation and its owner (README,
"The chat pipeline").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mpai.chat import scoped_cache
from mpai.chat.cache_groups import CONVERSATION_CONTEXT

#: Cache group of a conversation's recent messages.
GROUP = CONVERSATION_CONTEXT


def _is_messages(data: Any) -> bool:
    return isinstance(data, list) and all(
        isinstance(m, dict)
        and set(m) == {"role", "content"}
        and isinstance(m["role"], str)
        and isinstance(m["content"], str)
        for m in data
    )


def _owner(conversation: Any, user: Any) -> Any:
    """The conversation's owner pk, or None when ``user`` is given and is someone else."""
    owner = conversation.owner_id
    if user is not None and str(user.pk) != str(owner):
        return None
    return owner


def read_cached_history(conversation: Any, user: Any = None) -> list[dict[str, str]] | None:
    """Return the cached messages of ``conversation`` (``[{"role", "content"}]``, oldest
    first), or None on a miss.

    Args:
        conversation: a ``Conversation``; the entry must claim its pk and owner.
        user: when given, the user the context is for; anyone but the owner gets None.
    """
    owner = _owner(conversation, user)
    if owner is None:
        return None
    data = scoped_cache.get(str(conversation.pk), GROUP, owner=owner, conversation=conversation.pk)
    return list(data) if data is not None and _is_messages(data) else None


def write_cached_history(conversation: Any, user: Any, messages: Iterable[dict[str, str]]) -> None:
    """Cache ``messages`` (``[{"role", "content"}]``) as the context of ``conversation``.

    Args:
        user: the user whose turn produced them (None: the owner); nothing is cached
            for anyone but the conversation's owner.
    """
    owner = _owner(conversation, user)
    if owner is None:
        return
    scoped_cache.set(
        str(conversation.pk),
        [{"role": m["role"], "content": m["content"]} for m in messages],
        GROUP,
        owner=owner,
        conversation=conversation.pk,
    )


def delete_cached_history(conversation: Any) -> None:
    """Forget the cached context of ``conversation`` on this site."""
    scoped_cache.delete(str(conversation.pk), GROUP)
