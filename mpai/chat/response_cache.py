"""The response cache (seed 000: API responses cached 30 minutes).

Keyed by a SHA-256 of what changes the answer: the model, the messages and the
sampling parameters. Only complete replies (``finish_reason`` ``stop``) are stored.
Entries live in the ``api_response`` group of mpai's cache, ``MPAI["RESPONSE_CACHE_TIMEOUT"]``
seconds (default: the group's 30 minutes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mpai import cache as mpai_cache
from mpai.conf import mpai_settings
from mpai.providers import ChatRequest, Usage

GROUP = "api_response"


@dataclass(frozen=True)
class CachedReply:
    text: str
    finish_reason: str | None
    usage: Usage | None


def cache_key(request: ChatRequest) -> str:
    """Return the hex SHA-256 of the request's answer-changing fields."""
    payload = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "extra": request.extra,
    }
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def lookup(request: ChatRequest) -> CachedReply | None:
    """Return the cached reply to ``request``, or None."""
    entry: dict[str, Any] | None = mpai_cache.get(cache_key(request), group=GROUP)
    if not entry:
        return None
    usage = Usage(**entry["usage"]) if entry.get("usage") else None
    return CachedReply(entry["text"], entry.get("finish_reason"), usage)


def store(
    request: ChatRequest, *, text: str, finish_reason: str | None, usage: Usage | None
) -> None:
    """Cache a complete reply to ``request``."""
    if finish_reason != "stop" or not text:
        return
    entry = {
        "text": text,
        "finish_reason": finish_reason,
        "usage": usage.as_dict() if usage else None,
    }
    timeout = mpai_settings.RESPONSE_CACHE_TIMEOUT
    if timeout is None:
        mpai_cache.set(cache_key(request), entry, group=GROUP)
    else:
        mpai_cache.set(cache_key(request), entry, group=GROUP, timeout=timeout)
