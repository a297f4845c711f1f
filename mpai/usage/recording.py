"""Recording every turn's usage: the ``request_complete`` receiver and :func:`record_usage`.

``request_complete`` is sent after the turn's final frame, so recording never delays a
delta. For each turn that is not a replay and has a model, :func:`on_turn_complete`
takes the tokens from the saved reply (the provider's ``usage``, summed over a turn's
requests); when the provider sent none it estimates them with ``MPAI["TOKEN_ESTIMATOR"]``
(the prompt from the ``context_built`` messages, the completion from the reply) and
counts the turn as estimated. A cached reply counts as a request with no tokens and no
cost. :func:`record_usage` then upserts the (user, day, model) row, charges the tokens to
the quota counters and adds the cost to ``mpai_cost_total``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.utils import timezone

from mpai.usage import metrics, quotas, store
from mpai.usage.pricing import currency, turn_cost
from mpai.usage.windows import user_windows

logger = logging.getLogger("mpai.usage")

__all__ = ["RecordedTurn", "connect_usage_receivers", "on_turn_complete", "record_usage"]

#: Prompts kept (by request id) between ``context_built`` and ``request_complete``.
PENDING_PROMPTS = 10_000

_prompts: OrderedDict[str, Any] = OrderedDict()
_prompts_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class RecordedTurn:
    """What :func:`record_usage` recorded: tokens, ``cost`` (Decimal, ``currency``)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    currency: str
    estimated: bool
    cached: bool


def record_usage(
    user: Any,
    *,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    estimated: bool = False,
    cached: bool = False,
    now: Any = None,
) -> RecordedTurn:
    """Record one turn of ``user``: the usage row (+1 request, the tokens, the cost), the
    quota counters (the real tokens, so a reply may overshoot a token limit once) and
    ``mpai_cost_total``. Cached turns record no tokens and cost nothing.

    Args:
        model: the model that answered.
        prompt_tokens, completion_tokens: tokens in and out.
        estimated: the tokens are mpai's estimate (the provider sent no usage).
        cached: the reply came from the response cache.
        now: an aware datetime (tests); default the current time.

    Raises:
        django.db.DatabaseError: the row could not be written.
        ImproperlyConfigured: malformed ``MPAI["PRICES"]``.
    """
    if cached:
        prompt_tokens = completion_tokens = 0
        estimated = False
    cost = turn_cost(model, prompt_tokens, completion_tokens, cached=cached)
    windows = user_windows(user, now or timezone.now())
    store.add_usage(
        user_id=user.pk,
        day=windows.day,
        model=model,
        plan=quotas.plan_of(user) or "",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        estimated=estimated,
        cached=cached,
    )
    quotas.charge_tokens(user, prompt_tokens + completion_tokens, windows)
    unit = currency()
    metrics.observe_cost(model, unit, cost)
    return RecordedTurn(model, prompt_tokens, completion_tokens, cost, unit, estimated, cached)


def on_context_built(*, trace: Any, messages: Any, **kwargs: Any) -> None:
    """Receiver of ``context_built``: keep a reference to the prompt (no work now) in
    case the provider sends no usage and the turn must be estimated."""
    request_id = getattr(trace, "request_id", None)
    if request_id is None:
        return
    with _prompts_lock:
        _prompts[request_id] = messages
        while len(_prompts) > PENDING_PROMPTS:
            _prompts.popitem(last=False)


def _estimate(trace: Any, message: Any) -> tuple[int, int]:
    from mpai.chat.tokens import estimate_messages, get_estimator

    estimator = get_estimator()
    with _prompts_lock:
        prompt = _prompts.pop(getattr(trace, "request_id", ""), None)
    prompt_tokens = estimate_messages(prompt, estimator) if prompt else 0
    return prompt_tokens, estimator(getattr(message, "content", "") or "")


def on_turn_complete(*, trace: Any, user: Any, message: Any, **kwargs: Any) -> None:
    """Receiver of ``request_complete``: record the turn (:func:`record_usage`) unless
    it is a replay, has no model (it ended before a provider was chosen) or the user is
    anonymous. Never raises (failures are logged)."""
    prompt = message_prompt = getattr(message, "prompt_tokens", None)
    completion = getattr(message, "completion_tokens", None)
    request_id = getattr(trace, "request_id", None)
    try:
        if getattr(trace, "replayed", False) or not getattr(message, "model", ""):
            return
        if not getattr(user, "is_authenticated", False):
            return
        cached = bool(getattr(trace, "cached", False) or getattr(message, "cached", False))
        estimated = False
        if not cached and (message_prompt is None or completion is None):
            prompt, completion = _estimate(trace, message)
            estimated = True
        record_usage(
            user,
            model=message.model,
            prompt_tokens=int(prompt or 0),
            completion_tokens=int(completion or 0),
            estimated=estimated,
            cached=cached,
        )
    except Exception:
        logger.exception("mpai usage: recording a turn failed")
    finally:
        with _prompts_lock:
            _prompts.pop(request_id or "", None)


def connect_usage_receivers() -> None:
    """Connect :func:`on_context_built` and :func:`on_turn_complete` (idempotent: one
    dispatch_uid each) and register the usage metrics."""
    from mpai import signals

    signals.context_built.connect(
        on_context_built, dispatch_uid="mpai.usage.recording.on_context_built"
    )
    signals.request_complete.connect(
        on_turn_complete, dispatch_uid="mpai.usage.recording.on_turn_complete"
    )
