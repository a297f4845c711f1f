"""Model providers, chosen by import string in ``settings.MPAI["PROVIDER"]``.

Built lazily like Django's cache backends (``django/core/cache/__init__.py``):
``{"BACKEND": "dotted.path.Class", "OPTIONS": {...}}``; a bad entry raises
``ImproperlyConfigured`` naming the cause.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from mpai.conf import mpai_settings

from .base import (
    ChatProvider,
    ChatRequest,
    ChatStream,
    Completion,
    StreamChunk,
    ToolCall,
    ToolCallAssembler,
    Usage,
)

__all__ = [
    "ChatProvider",
    "ChatRequest",
    "ChatStream",
    "Completion",
    "StreamChunk",
    "ToolCall",
    "ToolCallAssembler",
    "Usage",
    "build_provider",
    "get_provider",
]

_lock = threading.Lock()
_provider: ChatProvider | None = None


def build_provider(config: dict[str, Any]) -> ChatProvider:
    """Build a provider from ``{"BACKEND": str, "OPTIONS": dict}``.

    Raises:
        ImproperlyConfigured: the backend cannot be imported or is not a ChatProvider.
    """
    try:
        backend = config["BACKEND"]
    except (KeyError, TypeError) as exc:
        raise ImproperlyConfigured('MPAI["PROVIDER"] needs a "BACKEND" import string.') from exc
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise ImproperlyConfigured(f"Could not import mpai provider {backend!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, ChatProvider)):
        raise ImproperlyConfigured(f"mpai provider {backend!r} is not a ChatProvider subclass.")
    return cls(**(config.get("OPTIONS") or {}))


def get_provider() -> ChatProvider:
    """Return the process's provider, built on first use from ``MPAI["PROVIDER"]``."""
    global _provider
    if _provider is None:
        with _lock:
            if _provider is None:
                _provider = build_provider(mpai_settings.PROVIDER)
    return _provider


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _provider
    if setting == "MPAI":
        _provider = None


setting_changed.connect(_reset, dispatch_uid="mpai.providers.reset")
