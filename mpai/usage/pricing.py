"""Prices per model (``MPAI["PRICES"]``) and the cost of a turn, in ``Decimal``.

``MPAI["PRICES"]`` maps a model name to ``{"input": price, "output": price}``, each the
price of one **million** tokens in ``MPAI["CURRENCY"]`` (a string, int or Decimal;
floats are turned into their shortest string first, so ``2.5`` is ``Decimal("2.5")``)::

    MPAI = {"PRICES": {"gpt-4o": {"input": "2.50", "output": "10.00"}}, "CURRENCY": "USD"}

A model missing from the table costs 0 (its tokens are still counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from mpai.conf import mpai_settings
from mpai.usage.models import COST_PLACES

#: Tokens a price is given for.
PER_TOKENS = Decimal(1_000_000)
#: A turn's cost is rounded (half even) to this quantum of the currency.
COST_QUANTUM = Decimal(1).scaleb(-COST_PLACES)
ZERO = Decimal(0)

_parsed: dict[str, tuple[Any, dict[str, Price]]] = {}


@dataclass(frozen=True, slots=True)
class Price:
    """The price of one million input and output tokens, in the currency."""

    input: Decimal
    output: Decimal


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool):
        raise ImproperlyConfigured(f"{where} must be a number, not {value!r}.")
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{where} must be a number, not {value!r}.") from exc
    if not number.is_finite() or number < 0:
        raise ImproperlyConfigured(f"{where} must be a finite number >= 0, not {value!r}.")
    return number


def price_table() -> dict[str, Price]:
    """``MPAI["PRICES"]`` parsed: model → :class:`Price` (currency per million tokens).

    Raises:
        ImproperlyConfigured: a price that is not a finite number >= 0, or an entry
            that is not ``{"input", "output"}``.
    """
    table = mpai_settings.PRICES or {}
    memo = _parsed.get("table")
    if memo is not None and memo[0] is table:
        return memo[1]
    if not isinstance(table, dict):
        raise ImproperlyConfigured('MPAI["PRICES"] must be a dict of model → prices.')
    parsed: dict[str, Price] = {}
    for model, entry in table.items():
        if not isinstance(entry, dict):
            raise ImproperlyConfigured(f'MPAI["PRICES"][{model!r}] must be a dict.')
        parsed[str(model)] = Price(
            input=_decimal(entry.get("input", 0), f'MPAI["PRICES"][{model!r}]["input"]'),
            output=_decimal(entry.get("output", 0), f'MPAI["PRICES"][{model!r}]["output"]'),
        )
    _parsed["table"] = (table, parsed)  # the settings keep the same dict until reloaded
    return parsed


def currency() -> str:
    """``MPAI["CURRENCY"]``, e.g. ``"USD"``."""
    return str(mpai_settings.CURRENCY)


def turn_cost(
    model: str, prompt_tokens: int, completion_tokens: int, *, cached: bool = False
) -> Decimal:
    """The cost of one turn in the currency: tokens × price / 1,000,000, rounded half
    even to :data:`COST_QUANTUM`; ``Decimal(0)`` for a cached reply or an unpriced model.

    Raises:
        ImproperlyConfigured: ``MPAI["PRICES"]`` is malformed.
    """
    if cached:
        return ZERO
    price = price_table().get(model)
    if price is None:
        return ZERO
    raw = (Decimal(max(0, prompt_tokens)) * price.input) + (
        Decimal(max(0, completion_tokens)) * price.output
    )
    return (raw / PER_TOKENS).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)
