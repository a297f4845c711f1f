"""Fixtures of the usage tests: a membership adapter with settable plans, settings."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mpai.tools.membership import MembershipAdapter
from tests.redis_server import RedisServer


class PlanAdapter(MembershipAdapter):
    """A membership adapter whose plans the test sets: ``held[username] = "Pro"``."""

    def __init__(self) -> None:
        self.held: dict[str, str | None] = {}

    def memberships(self, user: Any) -> list[dict[str, Any]]:
        return []

    def plans(self) -> list[dict[str, Any]]:
        return []

    def search_articles(self, query: str, limit: int = 3) -> list[dict[str, Any]]:
        return []

    def plan_for(self, user: Any) -> str | None:
        return self.held.get(user.get_username())


QUOTAS = {
    "default": {"messages_per_day": 2, "tokens_per_day": None, "tokens_per_month": None},
    "Pro": {"messages_per_day": 5, "tokens_per_day": 1000, "tokens_per_month": 3000},
}
PRICES = {"gpt-test": {"input": "2.50", "output": "10.00"}}


@pytest.fixture
def adapter() -> PlanAdapter:
    return PlanAdapter()


@pytest.fixture
def configure(settings: Any, adapter: PlanAdapter) -> Callable[..., dict[str, Any]]:
    """``configure(**options)``: settings.MPAI = the suite's, the adapter, QUOTAS,
    PRICES and ``options`` on top."""

    def apply(**options: Any) -> dict[str, Any]:
        mpai = {
            **settings.MPAI,
            "MEMBERSHIP_ADAPTER": adapter,
            "QUOTAS": QUOTAS,
            "PRICES": PRICES,
            **options,
        }
        settings.MPAI = mpai
        return mpai

    return apply


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop and start mid-test."""
    server = RedisServer()
    server.start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()
