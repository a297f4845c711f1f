"""mpai settings: one lazily read object over ``settings.MPAI``.

Modelled on DRF's ``rest_framework/settings.py``: every option has a default in
:data:`DEFAULTS`, a site overrides any of them in ``settings.MPAI``, values are
read on access (never copied at import time) and the cache of resolved values is
dropped on ``setting_changed`` so ``override_settings`` works in tests.

Usage::

    from mpai.conf import mpai_settings
    mpai_settings.MAX_MESSAGE_LENGTH
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Provider, built like a Django cache backend: import string + OPTIONS.
    # The offline provider needs no network; see mpai.providers.offline.
    "PROVIDER": {
        "BACKEND": "mpai.providers.offline.OfflineProvider",
        "OPTIONS": {},
    },
    # The capable model and the small fast model (the fast one defaults to MODEL).
    "MODEL": "offline-1",
    "FAST_MODEL": None,
    # Input validation: maximum characters in one user message.
    "MAX_MESSAGE_LENGTH": 8000,
    # History loaded into the provider request: newest N messages of the conversation.
    "HISTORY_MESSAGES": 40,
    # System prompt sent first in every request.
    "SYSTEM_PROMPT": ("You are the assistant of a membership website. Answer clearly and briefly."),
    # Threads that run provider streams for websocket consumers (each holds one
    # stream for its whole duration, so this bounds concurrent streams per process).
    "STREAM_WORKERS": 64,
    # Chat history retention in days (the seed's mpai_history_retention_days, 30).
    "HISTORY_RETENTION_DAYS": 30,
    # Conversation titles: characters of the first message used as the title.
    "TITLE_LENGTH": 60,
    # Websocket: most deltas buffered for one slow client before the stream waits.
    "WEBSOCKET_SEND_QUEUE": 1000,
}

# Options whose values are import strings resolved on access.
IMPORT_STRINGS: frozenset[str] = frozenset()


class MpaiSettings:
    """Attribute access to ``settings.MPAI`` merged over :data:`DEFAULTS`.

    Raises:
        AttributeError: for a name that is not in :data:`DEFAULTS`.
    """

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        if not hasattr(self, "_user_settings"):
            self._user_settings: dict[str, Any] = getattr(settings, "MPAI", {}) or {}
        return self._user_settings

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or attr not in self.defaults:
            raise AttributeError(f"Invalid mpai setting: {attr!r}")
        value = self.user_settings.get(attr, self.defaults[attr])
        if attr == "FAST_MODEL" and not value:
            value = self.MODEL
        self._cached.add(attr)
        setattr(self, attr, value)
        return value

    def reload(self) -> None:
        for attr in self._cached:
            delattr(self, attr)
        self._cached.clear()
        if hasattr(self, "_user_settings"):
            delattr(self, "_user_settings")


mpai_settings = MpaiSettings(DEFAULTS)


@receiver(setting_changed)
def _reload_mpai_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "MPAI":
        mpai_settings.reload()
