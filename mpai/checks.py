"""System checks (``manage.py check``) with stable ids.

- ``mpai.E001``: ``MPAI["PROVIDER"]`` cannot be built (bad import string or options).
- ``mpai.E002``: the context budget ``MAX_INPUT_TOKENS − REPLY_RESERVE_TOKENS`` is not positive.
- ``mpai.E003``: an app mpai needs is missing from ``INSTALLED_APPS``.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from mpai.conf import mpai_settings

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
