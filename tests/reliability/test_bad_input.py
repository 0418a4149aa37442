"""Fuzzing ``budget()``: every bad argument or price raises a clear ``ValueError`` (``BudgetConfigError``) when
the budget is built, never later inside a call; every budget that builds can run calls and report them."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import warnings
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shekel import BudgetConfigError, BudgetExceededError, PricingError, budget
from shekel._usage import Usage
from shekel.testing import FakeInferenceServer

PARAMETERS = set(inspect.signature(budget).parameters)


class Weird:
    """An object no argument accepts."""

    def __repr__(self) -> str:
        return "<Weird>"


def _arity0() -> None:
    return None


def _arity1(spent: float) -> None:
    return None


def _arity2(spent: float, limit: float) -> None:
    return None


def _varargs(*args: Any) -> None:
    return None


def _kwonly(spent: float, *, limit: float) -> None:
    return None


numbers = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.fractions(max_denominator=1000),
    st.sampled_from(
        [
            0,
            -0.0,
            1,
            0.5,
            1e-300,
            5e-324,
            1e300,
            10**400,
            Decimal("sNaN"),
            Decimal("-0"),
            Decimal("1e-1000000"),
            Decimal("1e1000000"),
            Decimal("1e999999"),
            Decimal("1e100"),
            Decimal("1e29"),
            Fraction(1, 3),
        ]
    ),
)
texts = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        ["1", " 1 ", "1_000", "0x10", "1e999999999", "-1", "nan", "inf", "0.001", "1e-7", "1,5", "$1"]
    ),
)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.complex_numbers(max_magnitude=10),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(Weird()),
    st.just(object),
)
anything = st.one_of(numbers, texts, junk)
hashable = st.one_of(
    st.integers(), st.floats(allow_nan=False), texts, st.none(), st.booleans(), st.binary(max_size=3)
)

one_price = st.one_of(
    st.fixed_dictionaries({"input": anything, "output": anything}),
    st.fixed_dictionaries({"input": numbers, "output": numbers}),
    st.dictionaries(st.sampled_from(["input", "output", "cached", "Input", ""]), anything, max_size=3),
    anything,
)
price_tables = st.one_of(
    st.none(),
    one_price,
    st.dictionaries(st.one_of(st.sampled_from(["*", "m", "cheap", ""]), hashable), one_price, max_size=3),
)
callbacks = st.one_of(
    st.none(), st.sampled_from([_arity0, _arity1, _arity2, _varargs, _kwonly, print, len]), anything
)
fallbacks = st.one_of(
    st.none(),
    st.fixed_dictionaries({"at_pct": anything, "model": st.one_of(texts, anything)}),
    st.fixed_dictionaries({"model": st.sampled_from(["cheap", "", " "])}),
    st.dictionaries(st.sampled_from(["at_pct", "model", "at", "pct"]), anything, max_size=3),
    anything,
)
counts = st.one_of(st.none(), st.integers(-5, 10**20), anything)


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    candidates: dict[str, Any] = {
        "max_usd": st.one_of(st.none(), numbers, texts, junk),
        "name": st.one_of(st.none(), texts, anything),
        "price_per_1k_tokens": price_tables,
        "warn_at": st.one_of(st.none(), numbers, texts, junk),
        "on_warn": callbacks,
        "fallback": fallbacks,
        "max_llm_calls": counts,
        "max_total_tokens": counts,
        "on_unknown_price": st.one_of(
            st.none(), st.sampled_from(["warn", "raise", "zero", "WARN", ""]), anything
        ),
    }
    chosen = draw(st.sets(st.sampled_from(sorted(candidates)), max_size=len(candidates)))
    return {k: draw(candidates[k]) for k in chosen if k in PARAMETERS}


def _exercise(b: Any) -> None:
    """What a program does with a budget: enter it, make calls (reserve, then settle or release), report."""
    refusals: tuple[type[BaseException], ...] = (BudgetExceededError, PricingError)
    with b:
        for model, max_tokens, usage in (
            ("m", 5, Usage(10, 5)),
            ("cheap", None, Usage(3, 7)),
            (None, 1, None),
        ):
            try:
                reservation = b.reserve(model=model, prompt_tokens=10, max_tokens=max_tokens)
            except refusals:
                continue
            if usage is None:
                b.release(reservation)
            else:
                b.settle(reservation, usage, streamed=False, source="fuzz")
    json.dumps(b.to_dict())
    assert isinstance(b.summary(), str)
    repr(b)
    for value in (b.spent, b.remaining, b.limit, b.reserved):
        assert value is None or not math.isnan(value)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs())
def test_budget_arguments_fail_at_construction_or_never(config: dict[str, Any]) -> None:
    try:
        b = budget(**config)
    except ValueError as exc:
        assert isinstance(exc, BudgetConfigError), f"{type(exc).__name__} is not a BudgetConfigError: {exc}"
        assert str(exc), "an error must say what is wrong"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _exercise(b)


@pytest.mark.parametrize(
    "config",
    [
        {"max_usd": -1},
        {"max_usd": 0},
        {"max_usd": float("nan")},
        {"max_usd": float("inf")},
        {"max_usd": "lots"},
        {"max_usd": True},
        {"max_usd": [1]},
        {"max_usd": Decimal("sNaN")},
        {"max_usd": 1, "warn_at": 0},
        {"max_usd": 1, "warn_at": 1.5},
        {"warn_at": 0.5},
        {"max_usd": 1, "on_warn": "print"},
        {"max_usd": 1, "on_warn": _arity0},
        {"max_usd": 1, "on_warn": _kwonly},
        {"price_per_1k_tokens": {}},
        {"price_per_1k_tokens": {"input": 1}},
        {"price_per_1k_tokens": {"input": 1, "output": -2}},
        {"price_per_1k_tokens": {"input": 1, "output": "2 dollars"}},
        {"price_per_1k_tokens": {"input": 1, "output": 2, "cache": 3}},
        {"price_per_1k_tokens": {"m": {"input": 1}}},
        {"price_per_1k_tokens": {"": {"input": 1, "output": 2}}},
        {"price_per_1k_tokens": [1, 2]},
        {"max_usd": 1, "fallback": {"model": ""}},
        {"max_usd": 1, "fallback": {"model": "x", "at_pct": 2}},
        {"max_usd": 1, "fallback": {"model": "x", "typo": 1}},
        {"fallback": {"model": "x"}},
        {"max_llm_calls": 0},
        {"max_llm_calls": 2.0},
        {"name": ""},
        {"name": 3},
    ],
    ids=repr,
)
def test_known_bad_values_raise_a_clear_budget_config_error(config: dict[str, Any]) -> None:
    with pytest.raises(BudgetConfigError) as info:
        budget(**config)
    assert isinstance(info.value, ValueError)
    named = {k.split("_")[0] for k in config}
    assert any(word in str(info.value) for word in named | {"price", "on_warn"}), str(info.value)


@pytest.mark.parametrize(
    "amount", [Decimal("1e1000000"), "1e999999", 10**400, Decimal("1e-1000000"), "1e-999999"], ids=repr
)
def test_extreme_magnitudes_fail_at_construction_or_work(amount: Any) -> None:
    for config in (
        {"max_usd": amount},
        {"max_usd": 1, "price_per_1k_tokens": {"input": amount, "output": 1}},
    ):
        try:
            b = budget(**config)
        except BudgetConfigError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _exercise(b)


def test_a_budget_that_builds_runs_real_calls() -> None:
    """The same promise through the real client: odd but valid arguments never fail inside the call."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    configs_ok: list[dict[str, Any]] = [
        {"max_usd": "0.5", "price_per_1k_tokens": {"input": "0.001", "output": Decimal("0.002")}},
        # Prices at their bounds (tests/core/test_price_bounds.py): 1/7 or 5e-324 are refused at construction.
        {"max_usd": Fraction(1, 3), "price_per_1k_tokens": {"input": Fraction(1, 8), "output": 0}},
        {"max_usd": 10**6, "price_per_1k_tokens": {"*": {"input": 1e-9, "output": "99999999999.999999999"}}},
        {"max_usd": Decimal("1e-6"), "price_per_1k_tokens": {"input": 0, "output": 0}},
        {
            "max_usd": 1,
            "warn_at": 1e-9,
            "on_warn": _varargs,
            "price_per_1k_tokens": {"input": 1, "output": 1},
        },
    ]
    with FakeInferenceServer() as server:
        client = huggingface_hub.InferenceClient(base_url=server.url)
        for config in configs_ok:
            with budget(**config) as b:
                with contextlib.suppress(BudgetExceededError):
                    client.chat_completion([{"role": "user", "content": "hi"}], max_tokens=3)
                b.summary()


@pytest.mark.parametrize(
    "amount", ["NaN", "-1", '"abc"', "true", "null", "[1]", '"1e999999"', "1e999", "1e20"], ids=str
)
def test_bad_amounts_in_a_pricing_file_fail_at_construction(amount: str, tmp_path: Any) -> None:
    if "pricing" not in PARAMETERS:
        pytest.skip("no pricing files in this version")
    path = tmp_path / "prices.json"
    path.write_text('{"unit": "per_1m_tokens", "models": {"m": {"input": ' + amount + ', "output": 1}}}')
    with pytest.raises(ValueError, match="input"):
        budget(pricing=str(path))
