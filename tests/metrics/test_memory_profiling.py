"""Per-stage memory deltas of real turns (mpai.metrics.memory, MPAI["MEMORY_PROFILING"])."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from mpai.chat.pipeline import ChatPipeline
from mpai.metrics import memory, receivers
from mpai.metrics.record import TurnRecord
from mpai.providers.offline import OfflineProvider
from tests.chat.turning import drive

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = "Your membership renews on the first of the month."


def mpai_with(**options: Any) -> override_settings:
    return override_settings(MPAI={**settings.MPAI, "METRICS_ENABLED": True, **options})


@pytest.fixture
def records(monkeypatch) -> list[TurnRecord]:
    seen: list[TurnRecord] = []
    monkeypatch.setattr(receivers, "submit", lambda turn: seen.append(turn) or True)
    return seen


@pytest.fixture
def user(make_user):
    return make_user()


def turn(user: Any) -> Any:
    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))
    return drive(pipe.stream(user=user, content="When do I renew?"))


@pytest.mark.skipif(memory.resident_bytes() is None, reason="no /proc/self/statm")
def test_a_turn_records_memory_per_stage(user, records) -> None:
    with mpai_with(MEMORY_PROFILING=True):
        assert turn(user).status == "complete"
    (record,) = records
    assert set(record.memory_kib) == {"request", "api_wait", "generation", "processing", "total"}
    assert all(isinstance(kib, float) for kib in record.memory_kib.values())
    parts = sum(v for k, v in record.memory_kib.items() if k != "total")
    assert parts == pytest.approx(record.memory_kib["total"], abs=0.5)
    assert memory.pending() == 0  # the turn's samples are gone


def test_off_the_record_is_empty_and_nothing_is_sampled(user, records, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(memory, "resident_bytes", lambda: calls.append("read") or 0)
    monkeypatch.setattr(memory, "finish", lambda trace: calls.append("finish") or {})
    with mpai_with(MEMORY_PROFILING=False):
        assert turn(user).status == "complete"
    (record,) = records
    assert record.memory_kib == {}
    assert calls == []
    assert memory.pending() == 0


def test_resident_memory_is_bytes() -> None:
    value = memory.resident_bytes()
    if value is None:
        pytest.skip("no /proc/self/statm")
    assert value > 1024 * 1024  # a Python process holds more than a MiB


def test_deltas_are_kib_between_the_points_reached() -> None:
    kib = 1024
    assert memory.deltas_kib(
        {"context_built": 10 * kib, "response_processed": 14 * kib, "request_complete": 13 * kib}
    ) == {"generation": 4.0, "processing": -1.0, "total": 3.0}
    assert memory.deltas_kib({}) == {}
