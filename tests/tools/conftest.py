"""Fixtures of the tool tests: configured tools, and Events released at teardown."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test.utils import override_settings


@pytest.fixture
def configure() -> Iterator[Callable[..., None]]:
    """``configure(tools, **options)``: ``MPAI["TOOLS"] = tools`` plus other MPAI options,
    over the suite's MPAI, until the test ends."""
    overrides: list[Any] = []

    def apply(tools: list[Any], **options: Any) -> None:
        override = override_settings(MPAI={**settings.MPAI, "TOOLS": tools, **options})
        override.enable()
        overrides.append(override)

    yield apply
    for override in reversed(overrides):
        override.disable()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An Event blocked tools wait on; set at teardown so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()
