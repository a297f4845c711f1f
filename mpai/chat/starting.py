"""Starting a turn: its conversation, its first provider request, the saved exchange.

The pieces :meth:`mpai.chat.pipeline.ChatPipeline.stream` puts together, in order:
:func:`find_conversation` (the user's own, or a new one not saved yet),
:func:`authorized` (the websocket's session check), :func:`prepare_turn` (context,
model, tools, the response-cache lookup, and the first request sent early:
:mod:`mpai.chat.opening`) and :func:`save_exchange` (the user's message and the empty
reply, in one transaction, while that request is on its way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from mpai import signals
from mpai.chat import response_cache
from mpai.chat import trace as points
from mpai.chat.context import ContextBuilder, ContextRequest
from mpai.chat.history import ConversationHistory
from mpai.chat.memory import ConversationMemory
from mpai.chat.model_choice import choose_model
from mpai.chat.opening import Opening, open_early
from mpai.chat.titles import default_title
from mpai.chat.trace import Trace
from mpai.conf import mpai_settings
from mpai.exceptions import ConversationNotFound, NotAuthenticated
from mpai.models import Conversation, Message
from mpai.providers import ChatProvider, ChatRequest
from mpai.tools import enabled_tools

logger = logging.getLogger("mpai.chat.pipeline")


def send_robust(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` from the pipeline (``sender=ChatPipeline``); a receiver's
    exception is logged, never raised."""
    from mpai.chat.pipeline import ChatPipeline

    for receiver, response in signal.send_robust(sender=ChatPipeline, **kwargs):
        if isinstance(response, Exception):
            logger.error("mpai signal receiver %r raised", receiver, exc_info=response)


@dataclass
class Prepared:
    """What a turn's first provider request is, decided before the exchange is saved.

    Attributes:
        memory: the conversation's live memory (without this exchange).
        model: the chosen model.
        request: the first request of the turn.
        use_cache: the response cache applies to this turn.
        cached: the cached reply to ``request``, or None.
        opening: the request already sent (:mod:`mpai.chat.opening`), or None (a
            cached reply).
    """

    memory: ConversationMemory
    model: str
    request: ChatRequest
    use_cache: bool
    cached: response_cache.CachedReply | None
    opening: Opening | None

    def discard(self) -> None:
        """Drop the request sent early, if the turn will not take it."""
        if self.opening is not None:
            self.opening.discard()


def authorized(user: Any, authorize: Callable[[], Any] | None) -> Any:
    """Return the user ``authorize`` confirms (``user`` without one).

    Raises:
        NotAuthenticated: ``authorize`` returned None.
    """
    if authorize is None:
        return user
    fresh = authorize()
    if fresh is None:
        raise NotAuthenticated()
    return fresh


def find_conversation(user: Any, conversation_id: object, text: str) -> tuple[Conversation, bool]:
    """Return (the conversation, whether it is new: then not saved yet, titled after
    ``text``).

    Raises:
        ConversationNotFound: no conversation ``conversation_id`` of ``user`` (ids are
            the integers mpai sent, or their decimal strings; anything else is unknown).
    """
    if conversation_id is None:  # saved with the exchange
        return Conversation(owner=user, title=default_title(text)), True
    if isinstance(conversation_id, bool) or not isinstance(conversation_id, int | str):
        raise ConversationNotFound()
    try:
        return Conversation.objects.get(pk=int(conversation_id), owner=user), False
    except (ValueError, OverflowError, Conversation.DoesNotExist) as exc:
        raise ConversationNotFound() from exc


def prepare_turn(
    history: ConversationHistory,
    provider: ChatProvider,
    user: Any,
    conversation: Conversation,
    *,
    new: bool,
    query: str,
    page: dict[str, Any] | None,
    use_cache: bool,
    trace: Trace,
    before: int | None = None,
) -> Prepared:
    """Build the context and the first request; look it up in the response cache,
    and send it to ``provider`` unless cached (:mod:`mpai.chat.opening`).

    Sends ``context_built`` and, when it sends the request, ``api_request_sent``.

    Args:
        history: the connection's live memories (:class:`ConversationHistory`).
        new: the conversation is created by this turn (no history to read).
        before: read only messages with ids below it (the turn's user message, once
            saved); None before the exchange is saved.
    """
    common = {"user": user, "conversation": conversation}
    memory = history.memory(conversation, before=before, new=new)
    context = ContextBuilder().build(
        ContextRequest(user, conversation, query, page), memory.messages
    )
    model = choose_model(query=query, prompt_tokens=context.tokens)
    trace.mark(points.CONTEXT_BUILT)
    send_robust(
        signals.context_built, trace=trace, messages=context.messages, model=model, **common
    )
    # Tools the user may use are offered on every request of the turn (the cache key
    # covers them); a turn that called any is never stored in the cache.
    offered = [tool.openai_schema() for tool in enabled_tools(user)] or None
    request = ChatRequest(model=model, messages=context.messages, tools=offered)
    use_cache = use_cache and bool(mpai_settings.RESPONSE_CACHE_ENABLED)
    cached = response_cache.lookup(request) if use_cache else None
    opening = None
    if cached is None:
        trace.provider_name = provider.provider_name
        trace.mark_once(points.API_REQUEST_SENT)
        send_robust(signals.api_request_sent, trace=trace, request=request, **common)
        opening = open_early(provider, request)
    return Prepared(memory, model, request, use_cache, cached, opening)


def save_exchange(
    user: Any, conversation: Conversation, text: str, *, client_id: str | None, new: bool
) -> tuple[Message, Message]:
    """Save the user's message and the empty reply (status ``streaming``), and a new
    conversation first; return (user message, reply).

    One transaction, so a ``client_id`` race leaves no empty conversation behind; both
    messages in one INSERT. The conversation's ``updated_at`` moves when the reply is
    saved (:func:`mpai.chat.saving.save_reply`), after the last token.

    Raises:
        IntegrityError: another exchange of ``user`` has ``client_id`` (a resend raced).
    """
    with transaction.atomic():
        if new:
            conversation.save(force_insert=True)
        user_message = Message(
            conversation=conversation,
            owner=user,
            role=Message.Role.USER,
            content=text,
            client_id=client_id,
        )
        assistant_message = Message(
            conversation=conversation,
            owner=user,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            heartbeat_at=timezone.now(),
        )
        Message.objects.bulk_create([user_message, assistant_message])
    return user_message, assistant_message
