"""Cost arithmetic in Decimal (mpai.usage.pricing)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from mpai.usage.pricing import price_table, turn_cost

PRICES = {"gpt-4o": {"input": "2.50", "output": "10.00"}, "cheap": {"input": 0.15, "output": 0.6}}


@override_settings(MPAI={"PRICES": PRICES})
def test_cost_is_tokens_times_the_price_per_million_in_decimal() -> None:
    # 1,234 in at 2.50/M + 567 out at 10.00/M = 0.003085 + 0.00567
    assert turn_cost("gpt-4o", 1234, 567) == Decimal("0.008755")
    assert turn_cost("gpt-4o", 1_000_000, 1_000_000) == Decimal("12.50")
    # Floats become their shortest string, never a binary fraction.
    assert price_table()["cheap"].input == Decimal("0.15")
    assert turn_cost("cheap", 1, 1) == Decimal("0.00000075")
    assert isinstance(turn_cost("gpt-4o", 3, 7), Decimal)


@override_settings(MPAI={"PRICES": PRICES})
def test_sums_of_many_turns_are_exact() -> None:
    total = sum((turn_cost("gpt-4o", 333, 77) for _ in range(3000)), Decimal(0))
    assert total == Decimal("3000") * (Decimal(333) * Decimal("2.5") + 77 * Decimal(10)) / 10**6


@override_settings(MPAI={"PRICES": PRICES})
def test_cached_replies_and_unpriced_models_cost_nothing() -> None:
    assert turn_cost("gpt-4o", 1000, 1000, cached=True) == 0
    assert turn_cost("unknown-model", 1000, 1000) == 0


@pytest.mark.parametrize("bad", ["abc", -1, True, "NaN", [1]])
def test_a_bad_price_is_a_configuration_error(bad: object) -> None:
    with (
        override_settings(MPAI={"PRICES": {"m": {"input": bad, "output": "1"}}}),
        pytest.raises(ImproperlyConfigured),
    ):
        turn_cost("m", 1, 1)
