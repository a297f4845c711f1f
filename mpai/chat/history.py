"""Conversation history: reading it for a prompt, and each connection's live memory.

- :func:`message_history`: a user's messages for the chat-history API.
- :func:`load_history`: a conversation's shown messages for the prompt.
- :class:`ConversationHistory`: the live memory (:mod:`mpai.chat.memory`) one
  connection keeps per conversation, kept coherent with other tabs and processes
  through the cached conversation history (:mod:`mpai.chat.history_cache`, 15 minutes).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from mpai.chat import history_cache
from mpai.chat.memory import ConversationMemory
from mpai.chat.tool_loop import with_tool_note
from mpai.conf import mpai_settings
from mpai.models import Conversation, Message


def message_history(*, user: Any) -> QuerySet[Message]:
    """Return ``user``'s messages, both roles, newest first.

    Ordered by ``(created_at, id)`` descending, which the index
    ``mpai_msg_owner_created_idx`` serves (keyset-friendly).
    """
    return Message.objects.filter(owner=user).order_by("-created_at", "-id")


def history_count(*, user: Any) -> int:
    """How many messages ``user`` has (the chat-history API's ``count``).

    On PostgreSQL one primary-key read of :class:`~mpai.models.HistoryCount`, kept by
    triggers in the same transaction as every insert and delete of messages; elsewhere
    a ``COUNT(*)`` of :func:`message_history`.
    """
    from django.db import connections, router

    from mpai.models import HistoryCount

    if connections[router.db_for_read(Message)].vendor != "postgresql":
        return message_history(user=user).count()
    row = HistoryCount.objects.filter(owner=user).values_list("messages", flat=True).first()
    return max(int(row or 0), 0)


def load_history(
    conversation: Conversation, *, limit: int, before: int | None = None
) -> list[dict[str, str]]:
    """Return the newest ``limit`` shown messages of ``conversation`` (with ids below
    ``before`` when given), oldest first, as ``[{"role", "content"}]``.

    Shown: complete or cancelled, with text (a failed reply's partial text stays out).
    A reply that called tools comes with a note of its calls and results before its
    text (:func:`mpai.chat.tool_loop.with_tool_note`).
    """
    shown = Message.objects.filter(
        conversation=conversation,
        status__in=[Message.Status.COMPLETE, Message.Status.CANCELLED],
    )
    if before is not None:
        shown = shown.filter(pk__lt=before)
    rows = (
        shown.exclude(content="")
        .order_by("-created_at", "-pk")
        .values_list("role", "content", "tool_calls")[:limit]
    )
    return [
        {"role": role, "content": with_tool_note(content, tool_calls)}
        for role, content, tool_calls in reversed(rows)
    ]


class ConversationHistory:
    """The live memories of one connection (one per conversation it chats in).

    At most :attr:`max_conversations` are kept, the least recently used dropped first:
    a connection that starts conversation after conversation (found by
    ``mpai_benchmark memory``: about 0.7 KiB more per turn, each reply kept) would
    otherwise keep every one for its whole life. A dropped memory is read again from
    the cached history or the database when its conversation comes back.
    """

    #: Live memories kept per connection.
    max_conversations = 32

    def __init__(self) -> None:
        self.memories: OrderedDict[int, ConversationMemory] = OrderedDict()

    def _keep(self, pk: int, memory: ConversationMemory) -> ConversationMemory:
        self.memories[pk] = memory
        self.memories.move_to_end(pk)
        while len(self.memories) > self.max_conversations:
            self.memories.popitem(last=False)
        return memory

    def adopt(self, pk: int, memory: ConversationMemory) -> None:
        """Keep ``memory`` as the live memory of the conversation ``pk`` (a new
        conversation's, made by :meth:`memory` before the conversation was saved)."""
        self._keep(pk, memory)

    def memory(
        self, conversation: Conversation, *, before: int | None = None, new: bool = False
    ) -> ConversationMemory:
        """Return the live memory of ``conversation`` with its current messages.

        ``new``: the conversation is created by this turn, so it has no messages;
        nothing is read (no cache lookup, no query), and a conversation not saved yet
        gets a memory that is kept once it is (:meth:`adopt`).

        The messages come from the cached conversation history (15 minutes, shared by
        every connection and process, so two tabs on one conversation agree); without
        it, from this connection's live memory unless the conversation moved on since
        (another tab or device) or it sat idle past ``MEMORY_IDLE_SECONDS``, which also
        drops the cached history; else from the database, taking only messages saved
        before ``before`` (the current user message's id) when given.
        """
        if new:
            fresh = ConversationMemory(max_pairs=mpai_settings.MEMORY_MAX_PAIRS)
            fresh.synced_at = timezone.now()
            return fresh if conversation.pk is None else self._keep(conversation.pk, fresh)
        memory = self.memories.get(conversation.pk)
        if memory is not None and memory.idle_for() > mpai_settings.MEMORY_IDLE_SECONDS:
            del self.memories[conversation.pk]
            history_cache.delete_cached_history(conversation)
            memory = None
        cached = history_cache.read_cached_history(conversation)
        if cached is None and memory is not None and not _moved_on(conversation, memory):
            return self._keep(conversation.pk, memory)
        if memory is None:
            memory = ConversationMemory(max_pairs=mpai_settings.MEMORY_MAX_PAIRS)
        self._keep(conversation.pk, memory)
        memory.messages = (
            list(cached)
            if cached is not None
            else load_history(conversation, limit=memory.safe_size, before=before)
        )
        memory.synced_at = timezone.now()
        return memory

    @staticmethod
    def remember(
        conversation: Conversation,
        user: Any,
        memory: ConversationMemory,
        *,
        query: str,
        reply: str,
    ) -> None:
        """Add a finished exchange to ``memory`` and to the cached history."""
        memory.append(Message.Role.USER.value, query)
        if reply:
            memory.append(Message.Role.ASSISTANT.value, reply)
        memory.end_turn()
        memory.synced_at = timezone.now()
        history_cache.write_cached_history(conversation, user, memory.messages)


def _moved_on(conversation: Conversation, memory: ConversationMemory) -> bool:
    """True when the conversation was updated after ``memory`` was last synced."""
    return memory.synced_at is not None and conversation.updated_at > memory.synced_at
