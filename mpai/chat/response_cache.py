"""The response cache (complete replies, 30 minutes by default).

Keyed by a SHA-256 of what changes the answer: the model, the messages, the tools
offered and the sampling parameters, and of the site (:mod:`mpai.site_identity`), so
sites sharing one Redis never serve each other's replies; an entry also claims its site
and is a miss for any other. Only complete replies (``finish_reason`` ``stop``) are
stored, and never a reply whose turn called tools (it rests on live data; the pipeline
does not store it).
Entries live in the ``api_response`` group (:mod:`mpai.chat.cache_groups`),
``MPAI["RESPONSE_CACHE_TIMEOUT"]`` seconds (default: the group's 30 minutes). Without a
site identity (its database row unreadable) nothing is looked up or stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mpai.chat import cache_groups
from mpai.chat.scoped_cache import current_site
from mpai.conf import mpai_settings
from mpai.providers import ChatRequest, Usage
from mpai.site_identity import site_identity

GROUP = cache_groups.API_RESPONSE


@dataclass(frozen=True)
class CachedReply:
    text: str
    finish_reason: str | None
    usage: Usage | None


def cache_key(request: ChatRequest, site: str | None = None) -> str:
    """Return the hex SHA-256 (64 characters) of the request's answer-changing fields.

    Args:
        site: the site identity to key by; None: this site's.

    Any ``str`` works, lone surrogates included: the JSON is ASCII-escaped.

    Raises:
        django.db.DatabaseError: ``site`` is None and the site identity is unreadable.
        TypeError: a field is not JSON-serializable.
    """
    payload = {
        "site": site if site is not None else site_identity(),
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "extra": request.extra,
    }
    if request.tools:  # only then, so the keys of requests without tools stay the same
        payload["tools"] = request.tools
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def lookup(request: ChatRequest) -> CachedReply | None:
    """Return this site's cached reply to ``request``, or None."""
    site = current_site()
    if site is None:
        return None
    entry: dict[str, Any] | None = cache_groups.get(cache_key(request, site), group=GROUP)
    if not isinstance(entry, dict) or entry.get("site") != site or "text" not in entry:
        return None
    usage = Usage(**entry["usage"]) if entry.get("usage") else None
    return CachedReply(entry["text"], entry.get("finish_reason"), usage)


def store(
    request: ChatRequest, *, text: str, finish_reason: str | None, usage: Usage | None
) -> None:
    """Cache a complete reply to ``request`` for this site."""
    if finish_reason != "stop" or not text:
        return
    site = current_site()
    if site is None:
        return
    entry = {
        "site": site,
        "text": text,
        "finish_reason": finish_reason,
        "usage": usage.as_dict() if usage else None,
    }
    key = cache_key(request, site)
    timeout = mpai_settings.RESPONSE_CACHE_TIMEOUT
    if timeout is None:
        cache_groups.set(key, entry, group=GROUP)
    else:
        cache_groups.set(key, entry, group=GROUP, timeout=timeout)
