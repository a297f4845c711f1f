"""The site's tools: ``MPAI["TOOLS"]`` loaded once per configuration, filtered per user.

``MPAI["TOOLS"]`` is a list whose entries are import strings (or the objects
themselves) naming a :class:`~mpai.tools.base.Tool` instance (a ``@tool`` function is
one) or a ``Tool`` subclass (instantiated without arguments)::

    MPAI = {"TOOLS": ["mpai.tools.membership.list_plans", "shop.tools.OrderStatus"]}

The list is imported on first use and kept until ``settings.MPAI`` changes
(``setting_changed``, so ``override_settings`` works in tests).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import jsonschema
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from mpai.conf import mpai_settings, perform_import
from mpai.tools.base import Tool

__all__ = ["configured_tools", "enabled_tools", "get_tool", "may_use"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, Tool] | None = None


def configured_tools() -> dict[str, Tool]:
    """Every tool of ``MPAI["TOOLS"]``, name -> tool, in the list's order.

    Raises:
        ImproperlyConfigured: an entry cannot be imported, is not a Tool (nor a Tool
            subclass), has parameters that are not a valid JSON Schema (draft
            2020-12), or two tools share a name.
    """
    global _loaded
    loaded = _loaded
    if loaded is not None:
        return loaded
    with _lock:
        if _loaded is None:
            _loaded = _load(mpai_settings.TOOLS or [])
        return _loaded


def _load(entries: list[Any]) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for entry in entries:
        value = perform_import(entry, "TOOLS")
        if isinstance(value, type) and issubclass(value, Tool):
            value = value()
        if not isinstance(value, Tool):
            raise ImproperlyConfigured(
                f'MPAI["TOOLS"] entry {entry!r} is {type(value).__name__}, not a Tool: '
                "decorate the function with @mpai.tools.tool or subclass mpai.tools.Tool."
            )
        try:
            jsonschema.Draft202012Validator.check_schema(value.parameters or {})
        except jsonschema.exceptions.SchemaError as exc:
            raise ImproperlyConfigured(
                f"Tool {value.name!r} has an invalid JSON Schema (draft 2020-12): {exc.message}"
            ) from exc
        if value.name in tools:
            raise ImproperlyConfigured(f'MPAI["TOOLS"] names two tools {value.name!r}.')
        tools[value.name] = value
    return tools


def may_use(tool: Tool, user: Any) -> bool:
    """Whether ``user`` may use ``tool``; a permission check that raises counts as no
    (logged), so a broken check hides its tool instead of failing the turn."""
    try:
        return tool.is_allowed(user)
    except Exception:
        logger.exception("Permission check of tool %r failed; the tool is not offered.", tool.name)
        return False


def enabled_tools(user: Any) -> list[Tool]:
    """The tools ``user`` may use, in ``MPAI["TOOLS"]`` order (see :func:`may_use`).

    Offer them with ``[t.openai_schema() for t in enabled_tools(user)]`` as the
    request's ``tools`` (OpenAI Chat Completions, function calling).

    Raises:
        ImproperlyConfigured: as :func:`configured_tools`.
    """
    return [tool for tool in configured_tools().values() if may_use(tool, user)]


def get_tool(name: str) -> Tool | None:
    """The configured tool named ``name``, or None (permissions are not checked here).

    Raises:
        ImproperlyConfigured: as :func:`configured_tools`.
    """
    return configured_tools().get(name)


@receiver(setting_changed)
def _reload_tools(*, setting: str, **kwargs: Any) -> None:
    global _loaded
    if setting == "MPAI":
        with _lock:
            _loaded = None
