"""System checks (``manage.py check``) with stable ids.

- ``mpai.E001``: ``MPAI["PROVIDER"]`` cannot be built (bad import string or options).
- ``mpai.E002``: the context budget ``MAX_INPUT_TOKENS − REPLY_RESERVE_TOKENS`` is not positive.
- ``mpai.E003``: an app mpai needs is missing from ``INSTALLED_APPS``.
- ``mpai.E004``: an import-string option (:data:`mpai.conf.IMPORT_STRINGS`, e.g.
  ``MPAI["TOKEN_ESTIMATOR"]``) cannot be imported.
- ``mpai.W001``: an unknown key in ``settings.MPAI`` (or in one of its dicts with a fixed
  set of keys, ``RATE_LIMIT`` and ``PROVIDER``), which mpai would silently ignore; the
  hint names the closest known key.
- ``mpai.W002``: mpai's cache alias (``MPAI["CACHE_ALIAS"]``) uses Redis without a
  ``KEY_PREFIX`` (README, "The layered cache": sites sharing one Redis).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from mpai.conf import DEFAULTS, IMPORT_STRINGS, mpai_settings

REQUIRED_APPS = ("channels", "rest_framework", "django.contrib.auth", "django.contrib.sessions")


@checks.register()
def check_provider(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from mpai.providers import build_provider

    try:
        build_provider(mpai_settings.PROVIDER)
    except (ImproperlyConfigured, TypeError) as exc:
        return [
            checks.Error(
                f'MPAI["PROVIDER"] cannot be built: {exc}',
                hint='Set "BACKEND" to a ChatProvider import string and "OPTIONS" to its options.',
                id="mpai.E001",
            )
        ]
    return []


@checks.register()
def check_budget(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    budget = int(mpai_settings.MAX_INPUT_TOKENS) - int(mpai_settings.REPLY_RESERVE_TOKENS)
    if budget <= 0:
        return [
            checks.Error(
                f"The context budget is {budget} tokens.",
                hint='MPAI["MAX_INPUT_TOKENS"] must be larger than MPAI["REPLY_RESERVE_TOKENS"].',
                id="mpai.E002",
            )
        ]
    return []


@checks.register()
def check_installed_apps(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [
        checks.Error(
            f"mpai needs {name!r} in INSTALLED_APPS.",
            hint=f'Add "{name}" to INSTALLED_APPS.',
            id="mpai.E003",
        )
        for name in REQUIRED_APPS
        if not apps.is_installed(name)
    ]


#: Options under ``settings.MPAI`` whose value is a dict with a fixed set of keys.
FIXED_KEY_DICTS: Mapping[str, Iterable[str]] = {
    "RATE_LIMIT": DEFAULTS["RATE_LIMIT"],
    "PROVIDER": ("BACKEND", "OPTIONS"),
}


def _unknown_key(where: str, key: object, known: Iterable[str]) -> checks.Warning:
    name = f'{where}["{key}"]'
    # Compared case-blind: "rate_limit" is closest to RATE_LIMIT.
    by_upper = {name.upper(): name for name in known}
    close = (
        difflib.get_close_matches(key.upper(), list(by_upper), n=1) if isinstance(key, str) else []
    )
    if close:
        hint = f'Did you mean {where}["{by_upper[close[0]]}"]?'
    elif where == "MPAI":
        hint = 'Remove it, or see the README, "Settings (settings.MPAI)", for the known keys.'
    else:
        hint = f"Remove it; the known keys are {', '.join(sorted(known))}."
    return checks.Warning(
        f"{name} is not an mpai setting; it is ignored.",
        hint=hint,
        id="mpai.W001",
    )


@checks.register()
def check_unknown_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    # An option misspelt (RATE_LIMITS, CAPACTY) silently keeps its default: say so,
    # with the key it was probably meant to be.
    user = getattr(settings, "MPAI", None) or {}
    if not isinstance(user, Mapping):
        return []
    messages: list[checks.CheckMessage] = [
        _unknown_key("MPAI", key, DEFAULTS) for key in user if key not in DEFAULTS
    ]
    for option, known in FIXED_KEY_DICTS.items():
        value = user.get(option)
        if isinstance(value, Mapping):
            names = list(known)
            messages += [
                _unknown_key(f'MPAI["{option}"]', key, names) for key in value if key not in names
            ]
    return messages


@checks.register()
def check_import_strings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for name in sorted(IMPORT_STRINGS):
        try:
            getattr(mpai_settings, name)
        except ImproperlyConfigured as exc:
            messages.append(
                checks.Error(
                    str(exc),
                    hint=f'Set MPAI["{name}"] to the dotted path of an importable object.',
                    id="mpai.E004",
                )
            )
    return messages


#: Cache backends that talk to Redis, by import string.
REDIS_CACHE_BACKENDS = frozenset(
    {"django_redis.cache.RedisCache", "django.core.cache.backends.redis.RedisCache"}
)
LAYERED_CACHE_BACKENDS = frozenset({"mpai.cache.LayeredCache", "mpai.cache.backend.LayeredCache"})


def _uses_redis(params: dict[str, Any]) -> bool:
    """Whether a ``CACHES`` entry keeps its keys in Redis (no I/O)."""
    backend = params.get("BACKEND")
    if backend in REDIS_CACHE_BACKENDS:
        return True
    if backend not in LAYERED_CACHE_BACKENDS:
        return False
    from mpai.cache.config import parse_options

    try:
        stack = parse_options(params.get("LOCATION", ""), dict(params.get("OPTIONS") or {}))
    except ImproperlyConfigured:
        return bool(params.get("LOCATION"))  # the cache itself reports the bad options
    return any(layer.backend in REDIS_CACHE_BACKENDS for layer in stack.layers)


@checks.register(checks.Tags.caches)
def check_cache_key_prefix(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    # Two sites on one Redis database without a KEY_PREFIX read each other's
    # keys. mpai's own entries are keyed and checked per site (mpai.chat.scoped_cache),
    # but every other key of the alias (the site's, Django's) still collides.
    alias = mpai_settings.CACHE_ALIAS
    params = (getattr(settings, "CACHES", None) or {}).get(alias)
    if not isinstance(params, dict) or params.get("KEY_PREFIX") or not _uses_redis(params):
        return []
    return [
        checks.Warning(
            f'CACHES["{alias}"], mpai\'s cache (MPAI["CACHE_ALIAS"]), uses Redis without '
            "a KEY_PREFIX.",
            hint=(
                "Set a KEY_PREFIX unique to this site: sites sharing one Redis database "
                "without one read and overwrite each other's cache keys."
            ),
            id="mpai.W002",
        )
    ]
