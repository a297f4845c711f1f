"""Benchmark suites for ``python manage.py mpai_benchmark <suite>``.

A suite is a module of this package whose name does not start with ``_``; it
provides ``run(stdout, options)``, where ``stdout`` has ``write(str)`` and
``options`` is a mapping with at least ``redis_url`` (str or None) and
``iterations`` (int or None: the suite's default). Adding a suite means adding a
module: the command lists the modules it finds here as its choices.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from types import ModuleType
from typing import Protocol

from django.conf import settings

#: Redis of the suites when neither the option, the setting nor the environment names one.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Writer(Protocol):
    """Where a suite prints its figures (``self.stdout`` of a management command)."""

    def write(self, s: str, /) -> object: ...


def suite_names() -> list[str]:
    """Return the names of the suites in this package, sorted."""
    return sorted(
        info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
    )


def load_suite(name: str) -> ModuleType:
    """Import and return the suite module ``name``.

    Raises:
        LookupError: no such suite, or the module has no ``run``.
    """
    if name not in suite_names():
        raise LookupError(f"No benchmark suite named {name!r}; choose from {suite_names()}.")
    module = importlib.import_module(f"{__name__}.{name}")
    if not callable(getattr(module, "run", None)):
        raise LookupError(f"Benchmark suite {name!r} has no run(stdout, options).")
    return module


def default_redis_url() -> str:
    """``settings.REDIS_URL``, else ``$REDIS_URL``, else the local server; database 0
    when the URL names none."""
    url = getattr(settings, "REDIS_URL", None) or os.environ.get("REDIS_URL") or ""
    url = url or DEFAULT_REDIS_URL
    scheme, _, rest = url.partition("://")
    if "/" not in rest.rstrip("/"):
        url = f"{scheme}://{rest.rstrip('/')}/0"
    return url
