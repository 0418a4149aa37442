"""Pricing files: TOML or JSON maps of model ids (optionally per provider) to input/output prices.

::

    unit = "per_1m_tokens"            # or "per_1k_tokens"; required, because a wrong guess is a 1000x error

    [models."meta-llama/Llama-3.3-70B-Instruct"]
    input = 0.88
    output = 0.88
    cached_input = 0.44               # optional

    [models."meta-llama/Llama-3.3-70B-Instruct".providers.novita]
    input = 0.50
    output = 0.60

    [models."*"]                      # optional: every other model
    input = 1.0
    output = 2.0

A file is read when the budget is built (so mistakes surface there), and cached until it changes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ._money import _TOO_LARGE, MILLION, THOUSAND
from ._pricing import Price, PriceTable
from .errors import PricingError

#: The environment variable naming a pricing file used by every budget (after any ``pricing=``).
ENV_VAR = "SHEKEL_PRICING"

_UNITS = {"per_1k_tokens": THOUSAND, "per_1m_tokens": MILLION}
_TOP_KEYS = frozenset({"unit", "models"})
_ENTRY_KEYS = frozenset({"input", "output", "cached_input", "providers"})
_PRICE_KEYS = frozenset({"input", "output", "cached_input"})
_EXAMPLE = (
    'e.g. unit = "per_1m_tokens" then [models."org/model"] with input = 0.5 and output = 1.5 '
    "(see docs/pricing.md)"
)

_lock = threading.Lock()
_cache: dict[tuple[str, int, int], PriceTable] = {}


def load_pricing_file(path: str | os.PathLike[str], *, origin: str = "pricing=") -> PriceTable:
    """Read and validate a pricing file. Raises :class:`PricingError` naming the file, key or line, and fix."""
    if not isinstance(path, (str, os.PathLike)):
        raise PricingError(
            f"{origin} must be the path of a .toml or .json pricing file, got {path!r} "
            f"({type(path).__name__})."
        )
    file = Path(path).expanduser()
    try:
        stat = file.stat()
    except OSError as exc:
        raise PricingError(
            f"pricing file {str(file)!r} (from {origin}) cannot be read: {exc.strerror or exc}. "
            "Check the path, or unset it."
        ) from None
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    table = _parse(file, _read(file, origin))
    with _lock:
        _cache[key] = table
    return table


def env_pricing() -> PriceTable | None:
    """The table of the file named by ``SHEKEL_PRICING``, or None when it is unset or empty."""
    path = os.environ.get(ENV_VAR, "").strip()
    return load_pricing_file(path, origin=f"the {ENV_VAR} environment variable") if path else None


def _read(file: Path, origin: str) -> Any:
    where = f"pricing file {str(file)!r}"
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PricingError(f"{where} (from {origin}) cannot be read: {exc}.") from None
    suffix = file.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise PricingError(
                f"{where} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
            ) from None
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
        try:
            return tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as exc:
            raise PricingError(f"{where} is not valid TOML: {exc}.") from None
    raise PricingError(f"{where} must end in .toml or .json, got {file.suffix or 'no suffix'!r}.")


def _parse(file: Path, data: Any) -> PriceTable:
    where = f"pricing file {str(file)!r}"
    if not isinstance(data, Mapping):
        raise PricingError(f"{where} must hold a table with 'unit' and 'models', {_EXAMPLE}.")
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise PricingError(
            f"{where} has unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"the known keys are 'unit' and 'models', {_EXAMPLE}."
        )
    unit = data.get("unit")
    if unit not in _UNITS:
        raise PricingError(
            f'{where}: \'unit\' must be "per_1k_tokens" or "per_1m_tokens", got {unit!r}. Say which: '
            "shekel does not guess, because the two differ 1000 times."
        )
    models = data.get("models")
    if not isinstance(models, Mapping) or not models:
        raise PricingError(f"{where}: 'models' must be a non-empty table of model ids, {_EXAMPLE}.")
    per = _UNITS[unit]
    source = f"pricing file {file.name!r}"
    per_model: dict[str, Price] = {}
    per_provider: dict[tuple[str, str], Price] = {}
    for model, entry in models.items():
        at = f"models.{_quote(model)}"
        _check_table(
            where,
            at,
            entry,
            _ENTRY_KEYS,
            f", {_EXAMPLE}",
            "'input', 'output', 'cached_input' and 'providers'",
        )
        if _PRICE_KEYS & set(entry) or "providers" not in entry:
            per_model[model] = _price(where, at, entry, per, source, None)
        providers = entry.get("providers", {})
        if not isinstance(providers, Mapping):
            raise PricingError(f"{where}: {at}.providers must be a table of provider names, {_EXAMPLE}.")
        for provider, price in providers.items():
            place = f"{at}.providers.{_quote(provider)}"
            _check_table(where, place, price, _PRICE_KEYS, "", "'input', 'output' and 'cached_input'")
            per_provider[(model, provider)] = _price(where, place, price, per, source, provider)
    return PriceTable(flat=None, per_model=per_model, per_provider=per_provider)


def _check_table(
    where: str, at: str, value: object, known: frozenset[str], example: str, known_text: str
) -> None:
    """A price entry must be a table holding only ``known`` keys."""
    if not isinstance(value, Mapping):
        raise PricingError(f"{where}: {at} must be a table with 'input' and 'output'{example}.")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise PricingError(
            f"{where}: {at} has unknown key(s) {', '.join(map(repr, unknown))}; the known keys are {known_text}."
        )


def _price(
    where: str, at: str, entry: Mapping[str, Any], per: Decimal, source: str, provider: str | None
) -> Price:
    missing = [k for k in ("input", "output") if k not in entry]
    if missing:
        raise PricingError(f"{where}: {at} is missing {' and '.join(map(repr, missing))}, {_EXAMPLE}.")
    amounts = {k: _amount(where, f"{at}.{k}", entry[k]) / per for k in _PRICE_KEYS if k in entry}
    return Price(
        amounts["input"],
        amounts["output"],
        source if provider is None else f"{source}, provider {provider!r}",
        amounts.get("cached_input"),
        provider,
    )


def _amount(where: str, at: str, value: object) -> Decimal:
    problem = ""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        problem = "must be a number"
    else:
        try:
            amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation:
            problem = "must be a number"
        else:
            if not amount.is_finite():
                problem = "must be a finite number"
            elif amount < 0:
                problem = "must not be negative"
            elif amount >= _TOO_LARGE:  # it would overflow Decimal arithmetic inside a later call
                problem = "must be below 1e15"
            else:
                return amount
    raise PricingError(f"{where}: {at} {problem}, got {value!r}. Give USD in the file's 'unit'.")


def _quote(key: object) -> str:
    text = str(key)
    return text if text.replace("_", "").replace("-", "").isalnum() else json.dumps(text)
