"""Prices: parsing ``price_per_1k_tokens`` and resolving the price of a call along a budget chain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from ._money import THOUSAND, to_decimal
from .errors import BudgetConfigError

_PRICE_KEYS = frozenset({"input", "output"})
_PRICE_FIX = (
    'Give prices in USD per 1,000 tokens, e.g. price_per_1k_tokens={"input": 0.001, "output": 0.002}.'
)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token for input (prompt) and output (completion) tokens, and where the price came from."""

    input_per_token: Decimal
    output_per_token: Decimal
    source: str

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return self.input_per_token * input_tokens + self.output_per_token * output_tokens


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The prices one ``budget()`` was given: one price for every model, or prices per model id."""

    flat: Price | None
    per_model: Mapping[str, Price]

    def lookup(self, model: str | None) -> Price | None:
        if self.flat is not None:
            return self.flat
        if model is not None and model in self.per_model:
            return self.per_model[model]
        return self.per_model.get("*")


def _parse_one(value: object, *, where: str, source: str) -> Price:
    if not isinstance(value, Mapping):
        raise BudgetConfigError(
            f"{where} must be a mapping with 'input' and 'output', got {value!r}. {_PRICE_FIX}"
        )
    unknown = sorted(str(k) for k in value if k not in _PRICE_KEYS)
    if unknown:
        raise BudgetConfigError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; the known keys are 'input' and "
            f"'output'. {_PRICE_FIX}"
        )
    missing = sorted(_PRICE_KEYS - set(value))
    if missing:
        raise BudgetConfigError(f"{where} is missing {', '.join(map(repr, missing))}. {_PRICE_FIX}")
    per_1k = {}
    for key in ("input", "output"):
        amount = to_decimal(value[key], what=f"{where}[{key!r}]", fix=_PRICE_FIX)
        if amount < 0:
            raise BudgetConfigError(
                f"{where}[{key!r}] must not be negative, got {value[key]!r}. {_PRICE_FIX}"
            )
        per_1k[key] = amount
    return Price(per_1k["input"] / THOUSAND, per_1k["output"] / THOUSAND, source)


def parse_price_table(value: object, *, budget_name: str) -> PriceTable:
    """Validate ``price_per_1k_tokens``: ``{"input": x, "output": y}`` or ``{model_id: {...}, "*": {...}}``."""
    source = f"budget {budget_name!r}"
    if not isinstance(value, Mapping) or not value:
        raise BudgetConfigError(
            f"price_per_1k_tokens must be a non-empty mapping, got {value!r}. {_PRICE_FIX} "
            'Per model: {"meta-llama/Llama-3.2-1B-Instruct": {"input": ..., "output": ...}, "*": {...}}.'
        )
    keys = set(value)
    if keys & _PRICE_KEYS:
        return PriceTable(flat=_parse_one(value, where="price_per_1k_tokens", source=source), per_model={})
    per_model: dict[str, Price] = {}
    for model, price in value.items():
        if not isinstance(model, str) or not model:
            raise BudgetConfigError(f"price_per_1k_tokens keys must be model ids (str), got {model!r}.")
        per_model[model] = _parse_one(price, where=f"price_per_1k_tokens[{model!r}]", source=source)
    return PriceTable(flat=None, per_model=per_model)
