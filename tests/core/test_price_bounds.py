"""The bounds of a price, in ``price_per_1k_tokens`` and pricing files alike.

A reservation multiplies a per-token price by up to millions of tokens and adds it to the ledger, whose
arithmetic has 28 significant digits (Python's default context, which shekel keeps). Every accepted price is
a whole number of 1e-12 USD per token below 1e8 USD, so every charge below 1e16 USD is exact; outside those
bounds a price is refused when the budget is built, not inside a call.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shekel import BudgetConfigError, PricingError, budget
from shekel._budget import OUTPUT_MARGIN_TOKENS
from shekel._money import MONEY_PRECISION
from shekel._pricing import MAX_PRICE_PER_TOKEN, PRICE_QUANTUM
from shekel._usage import _MAX_SANE_TOKENS, Usage

# The edges, per 1,000 tokens and per 1,000,000 tokens.
FINEST_1K, LARGEST_1K = "0.000000001", "99999999999.999999999"
FINEST_1M, LARGEST_1M = "0.000001", "99999999999999.999999"
FINER = "at most 9 decimal places"
FINER_1M = "at most 6 decimal places"


def _digits(amount: Decimal) -> int:
    return len(amount.normalize(decimal.Context(prec=100)).as_tuple().digits) if amount else 1


def test_the_bounds_are_where_28_digits_end() -> None:
    """Just inside the bounds a charge needs 28 digits, just outside 29 (computed at 100 digits)."""
    assert MONEY_PRECISION == 28
    tokens = 10**8 - 1  # the most a call may use, reserved or settled, and stay exact
    with decimal.localcontext(decimal.Context(prec=100)):
        largest = MAX_PRICE_PER_TOKEN - PRICE_QUANTUM
        assert _digits(largest * tokens) == 28
        assert _digits(largest * (tokens + 2)) == 29  # a call of more than 100 million tokens
        assert _digits(Decimal("1e16") - PRICE_QUANTUM / 10) == 29  # a finer price, at the top of the range
        # A settled call: 10 million input and 10 million output tokens at the largest price.
        assert _digits(largest * 2 * _MAX_SANE_TOKENS) <= 28


# ------------------------------------------------------------------------------------------ price_per_1k_tokens
@pytest.mark.parametrize(
    "amount",
    [0, "0", FINEST_1K, 1e-9, LARGEST_1K, Decimal("1.500000000000"), "0.123456789", 99999999999],
    ids=repr,
)
def test_prices_at_the_edges_are_accepted(amount: Any) -> None:
    b = budget(price_per_1k_tokens={"input": amount, "output": amount, "cached_input": amount})
    price = b.price_for("m", None)
    assert price is not None and price.input_per_token * 1000 == Decimal(str(amount))


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        ("0.0000000001", FINER),  # $1e-13 per token
        ("0.0000000015", FINER),
        ("1e-999999", FINER),  # reserving it overflowed Decimal inside the call
        (5e-324, FINER),
        (0.1 + 0.2, FINER),  # 0.30000000000000004: float noise is not a price
        ("1e11", "must be below 1e11"),
        (10**11, "must be below 1e11"),
        ("1e14", "must be below 1e11"),
        ("1e999999", "must be below 1e11"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("key", ["input", "output", "cached_input"])
def test_prices_past_the_edges_are_refused_when_the_budget_is_built(
    key: str, amount: Any, problem: str
) -> None:
    prices = {"input": 1, "output": 1, key: amount}
    with pytest.raises(BudgetConfigError, match=problem) as caught:
        budget(max_usd=1, price_per_1k_tokens=prices)
    assert f"price_per_1k_tokens[{key!r}]" in str(caught.value)
    with pytest.raises(BudgetConfigError, match=problem):
        budget(price_per_1k_tokens={"org/model": prices})


def test_a_tiny_price_no_longer_fails_inside_the_call() -> None:
    """Before: accepted, then the reservation worked out how many output tokens $1 pays for, and Decimal
    overflowed (decimal.Overflow) inside the user's call."""
    with pytest.raises(BudgetConfigError, match=FINER):
        budget(max_usd=1, price_per_1k_tokens={"input": "1e-999999", "output": "1e-999999"})


# ------------------------------------------------------------------------------------------ pricing files
def _file(tmp_path: Path, unit: str, amount: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(
        f'unit = "{unit}"\n[models.m]\ninput = {amount}\noutput = {amount}\ncached_input = {amount}\n'
    )
    return path


@pytest.mark.parametrize(
    ("unit", "amount"),
    [
        ("per_1k_tokens", FINEST_1K),
        ("per_1k_tokens", LARGEST_1K),
        ("per_1m_tokens", FINEST_1M),
        ("per_1m_tokens", LARGEST_1M),
        ("per_1m_tokens", "0"),
    ],
)
def test_file_prices_at_the_edges_are_accepted(tmp_path: Path, unit: str, amount: str) -> None:
    price = budget(pricing=_file(tmp_path, unit, amount)).price_for("m", None)
    per = 1000 if unit == "per_1k_tokens" else 1_000_000
    assert price is not None and price.output_per_token * per == Decimal(amount)


@pytest.mark.parametrize(
    ("unit", "amount", "problem"),
    [
        ("per_1k_tokens", "0.0000000001", FINER),
        ("per_1k_tokens", "1e11", "must be below 1e11 USD per 1,000 tokens"),
        ("per_1m_tokens", "0.0000001", FINER_1M),
        ("per_1m_tokens", "0.0000015", FINER_1M),
        ("per_1m_tokens", "1e14", "must be below 1e14 USD per 1,000,000 tokens"),
        ("per_1m_tokens", "1e-999999", FINER_1M),
    ],
)
def test_file_prices_past_the_edges_are_refused_when_the_budget_is_built(
    tmp_path: Path, unit: str, amount: str, problem: str
) -> None:
    with pytest.raises(PricingError, match=problem) as caught:
        budget(pricing=_file(tmp_path, unit, amount))
    assert "prices.toml" in str(caught.value) and "models.m.input" in str(caught.value)


# ------------------------------------------------------------------------------------------ exact at the edges
@contextmanager
def _context(kind: str) -> Iterator[decimal.Context]:
    """The application's decimal context: Python's default, one that traps Inexact, one with 6 digits."""
    with decimal.localcontext() as context:
        if kind == "traps Inexact":
            context.traps[decimal.Inexact] = True
        elif kind == "6 digits":
            context.prec = 6
        context.clear_flags()
        yield context


@pytest.mark.parametrize("kind", ["default", "traps Inexact", "6 digits"])
def test_a_reservation_of_almost_100_million_tokens_at_the_largest_price_is_exact(kind: str) -> None:
    per_token = Decimal(LARGEST_1K) / 1000
    prompt, max_tokens = 50_000_000, 50_000_000 - OUTPUT_MARGIN_TOKENS - 1  # 99,999,999 tokens reserved
    with _context(kind) as context:
        b = budget(price_per_1k_tokens={"input": LARGEST_1K, "output": LARGEST_1K})
        r = b.reserve(model="m", provider=None, prompt_tokens=prompt, max_tokens=max_tokens)
        if kind == "default":
            assert not context.flags[decimal.Inexact]
    with decimal.localcontext(decimal.Context(prec=100)):
        assert r.cost == per_token * (10**8 - 1) == Decimal("9999999899999999.999900000001")


@pytest.mark.parametrize("kind", ["default", "traps Inexact", "6 digits"])
def test_a_settled_call_of_20_million_tokens_at_the_largest_price_is_exact(kind: str) -> None:
    per_token = Decimal(LARGEST_1K) / 1000
    with _context(kind) as context:
        b = budget(price_per_1k_tokens={"input": LARGEST_1K, "output": LARGEST_1K})
        r = b.reserve(model="m", provider=None, prompt_tokens=_MAX_SANE_TOKENS, max_tokens=_MAX_SANE_TOKENS)
        b.settle(r, Usage(_MAX_SANE_TOKENS, _MAX_SANE_TOKENS), streamed=False, source="test")
        if kind == "default":
            assert not context.flags[decimal.Inexact]
    with decimal.localcontext(decimal.Context(prec=100)):
        assert r.cost == per_token * (2 * _MAX_SANE_TOKENS + OUTPUT_MARGIN_TOKENS)
        assert b.spent_exact == per_token * 2 * _MAX_SANE_TOKENS == Decimal("1999999999999999.99998")


@pytest.mark.parametrize("kind", ["default", "traps Inexact", "6 digits"])
def test_the_finest_price_under_the_largest_cap_is_exact(kind: str) -> None:
    cap = Decimal("999999999999999.999999999999")  # 28 digits, just below 1e15
    with _context(kind) as context:
        b = budget(max_usd=cap, price_per_1k_tokens={"input": FINEST_1K, "output": FINEST_1K})
        for _ in range(3):
            r = b.reserve(model="m", provider=None, prompt_tokens=1, max_tokens=1)
            b.settle(r, Usage(1, 1), streamed=False, source="test")
        if kind == "default":
            assert not context.flags[decimal.Inexact]
    assert b.spent_exact == Decimal("6e-12")
    with decimal.localcontext(decimal.Context(prec=100)):
        assert cap - b.spent_exact == Decimal("999999999999999.999999999993")
