"""Bundled per-provider prices of Hugging Face Inference Providers, read from ``genai-prices``.

genai-prices (installed with ``shekel[huggingface]``) ships its data inside the package, so nothing here
touches the network. It names each router provider ``huggingface_<provider>``. The package is imported on
the first lookup, never by ``import shekel``.

Its public API prices a call (``calc_price``) but cannot list which providers price a model, which an
auto-routed call needs, nor give the per-token prices a reservation multiplies. So shekel reads its data
snapshot, and nothing else of it:

- ``genai_prices.data_snapshot.get_snapshot()``: ``.providers``, ``.from_auto_update``, ``.timestamp``;
- a provider's ``.id`` and ``.find_model(model_ref)`` (a model or None);
- a model's ``.id`` and ``.get_prices(datetime)``: ``.input_mtok``, ``.output_mtok``, ``.cache_read_mtok``,
  ``.cache_write_mtok``, each a ``Decimal``, None, or tiers (``.base`` and ``.tiers``, each with a ``.price``), and ``vars()``.

The extra pins genai-prices to the 0.2 series, whose releases differ only in their data;
``tests/core/test_genai_prices_contract.py`` checks that layout, and that every price read here is the one
``calc_price`` computes. An installed genai-prices laid out otherwise is treated like a missing one: calls
are unpriced, and the unpriced-call warning says why.
"""

from __future__ import annotations

import functools
import sys
from datetime import date, datetime, timezone
from decimal import ROUND_CEILING, Context, Decimal
from typing import Any

from ._money import MILLION, MONEY_PRECISION
from ._pricing import AUTO, PRICE_QUANTUM, ROUTING_POLICIES, Price, highest

_PREFIX = "huggingface_"
#: Providers that are a vendor's own API, priced from genai-prices' provider of that name.
DIRECT_APIS = frozenset({"openai", "anthropic"})
# Keyed by the snapshot's identity: a genai-prices auto-update swaps the snapshot, and with it the answers.
_providers_cache: dict[tuple[int, str], tuple[str, ...]] = {}
_price_cache: dict[tuple[int, str, str, date], Price | None] = {}


@functools.cache
def _version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("genai-prices")
    except PackageNotFoundError:
        return None


@functools.cache
def _data_snapshot_module() -> tuple[Any | None, str | None]:
    """genai-prices' ``data_snapshot`` module, or None and why it cannot be imported."""
    # Cached, failure included: a failing import searches sys.path again on every call.
    try:
        from genai_prices import data_snapshot
    except ImportError as exc:
        return None, str(exc)
    from ._versions import check

    check("genai-prices", "huggingface")  # warns once when it is outside the range the extra names
    return data_snapshot, None


# Why the installed genai-prices could not be read (its layout changed) at the latest lookup, if it could not.
_unreadable: str | None = None


def _cannot_read(exc: Exception) -> None:
    from ._versions import supported_range

    global _unreadable
    _unreadable = (
        f"Hugging Face Inference Providers are priced from genai-prices, and the installed genai-prices "
        f"{_version() or '(unknown version)'} is not laid out the way shekel reads it "
        f"({type(exc).__name__}: {exc}); shekel supports genai-prices"
        f"{supported_range('genai-prices') or ' as its huggingface extra names it'}: "
        'pip install "shekel[huggingface]" installs a supported one.'
    )


def _snapshot() -> Any | None:
    module, _ = _data_snapshot_module()
    return None if module is None else module.get_snapshot()


def available() -> bool:
    """Whether the bundled price data can be used here (genai-prices is installed, and readable)."""
    try:
        return _snapshot() is not None
    except AttributeError as exc:
        _cannot_read(exc)
        return False


def unavailable_reason() -> str | None:
    """Why the bundled prices cannot be used here and what to do, for a message; None when they can."""
    _, error = _data_snapshot_module()
    if error is not None:
        return _missing(error, (sys.version_info[0], sys.version_info[1]))
    return _unreadable


def _missing(error: str, python: tuple[int, int]) -> str:
    if python < (3, 11):
        return (
            "Hugging Face Inference Providers are priced from genai-prices, and genai-prices needs Python 3.11 "
            f"or newer (this is Python {python[0]}.{python[1]}), so here shekel knows only the prices you give "
            "(price_per_1k_tokens or a pricing file)."
        )
    return (
        f"Hugging Face Inference Providers are priced from genai-prices, which cannot be imported here ({error}); "
        'pip install "shekel[huggingface]" installs it.'
    )


def _today() -> date:
    return datetime.now(timezone.utc).date()


def providers_for(model: str) -> tuple[str, ...]:
    """The Inference Providers (router names, e.g. ``"together"``) the bundled data has prices for ``model``."""
    try:
        snapshot = _snapshot()
        if snapshot is None:
            return ()
        key = (id(snapshot), model.lower())
        names = _providers_cache.get(key)
        if names is None:
            names = _providers_cache[key] = tuple(
                p.id[len(_PREFIX) :]
                for p in snapshot.providers
                if p.id.startswith(_PREFIX) and p.find_model(model.lower()) is not None
            )
        return names
    except (AttributeError, TypeError) as exc:
        _cannot_read(exc)
        return ()


def bundled_price(model: str, provider: str) -> Price | None:
    """The bundled price of ``model`` on ``provider`` (a router name), or the highest one for AUTO."""
    global _unreadable
    try:
        price = _bundled_price(model, provider)
    except (AttributeError, TypeError) as exc:
        _cannot_read(exc)
        return None
    _unreadable = None
    return price


def _bundled_price(model: str, provider: str) -> Price | None:
    snapshot = _snapshot()
    if snapshot is None:
        return None
    if provider in ROUTING_POLICIES:
        names = providers_for(model)
        prices = [p for p in (_price(snapshot, model.lower(), n, _today()) for n in names) if p is not None]
        return highest(
            prices,
            f"{_label(snapshot, _today())}: the highest of {len(prices)} providers' prices "
            f"({', '.join(names)}) for an auto-routed call",
        )
    return _price(snapshot, model.lower(), provider, _today())


def _price(snapshot: Any, model: str, provider: str, day: date) -> Price | None:
    key = (id(snapshot), model, provider, day)
    if key not in _price_cache:
        _price_cache[key] = _read_price(snapshot, model, provider, day)
    return _price_cache[key]


def _read_price(snapshot: Any, model: str, provider: str, day: date) -> Price | None:
    wanted = _PREFIX + provider.lower()
    # A provider that is a vendor's own API (the OpenAI and Anthropic SDKs pointed at it, or
    # huggingface_hub's "openai" provider, which calls OpenAI's API with the user's key): its own prices.
    direct = provider.lower() if provider.lower() in DIRECT_APIS else None
    for entry in snapshot.providers:
        if entry.id == wanted:
            info = entry.find_model(model)
            break
    else:
        entry = next((e for e in snapshot.providers if e.id == direct), None) if direct else None
        if entry is None:
            return None
        info = entry.find_model(model)
    if info is None:
        return None
    when = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
    prices = info.get_prices(when)
    # Not getattr(prices, key, None): an unset price reads None, and a renamed one must fail loudly.
    per_1m = {
        "input_mtok": _top(prices.input_mtok),
        "output_mtok": _top(prices.output_mtok),
        "cache_read_mtok": _top(prices.cache_read_mtok),
        "cache_write_mtok": _top(prices.cache_write_mtok),
    }
    if per_1m["input_mtok"] is None and per_1m["output_mtok"] is None:
        return None
    others = sorted(
        k for k, v in vars(prices).items() if v is not None and not k.startswith("_") and k not in per_1m
    )
    extra = f"; it also lists {', '.join(others)}, which shekel does not charge" if others else ""
    cached, written = per_1m["cache_read_mtok"], per_1m["cache_write_mtok"]
    return Price(
        (per_1m["input_mtok"] or Decimal(0)) / MILLION,
        (per_1m["output_mtok"] or Decimal(0)) / MILLION,
        f"{_label(snapshot, day)} ({entry.id}, model {info.id}){extra}",
        None if cached is None else cached / MILLION,
        provider,
        None if written is None else written / MILLION,
    )


def _top(value: Any) -> Decimal | None:
    """A price, or the highest tier of a tiered one: shekel charges the worst case rather than guess."""
    if value is None:
        return None
    tiers = getattr(value, "tiers", None)
    if tiers is not None:
        return _published(max([value.base, *(t.price for t in tiers)]))
    return _published(value)


# Some prices in the data went through a float on their way in (1.0399999999999998 for a published $1.04);
# no published per-1M price has 12 significant digits, so rounding to 12 gives back the price as published.
# Then, like every price shekel accepts, a whole number of PRICE_QUANTUM per token, rounding up: a no-op for
# every published price (none has more than 6 decimal places per 1M tokens), and a ledger that stays exact.
_PUBLISHED_DIGITS = Context(prec=12)
_PER_1M_STEP = (PRICE_QUANTUM * MILLION).normalize()
_WIDE = Context(prec=MONEY_PRECISION)


def _published(value: Any) -> Decimal:
    published = _PUBLISHED_DIGITS.plus(Decimal(value))
    return published.quantize(_PER_1M_STEP, rounding=ROUND_CEILING, context=_WIDE).normalize(_WIDE)


def _label(snapshot: Any, day: date) -> str:
    version = _version() or "unknown version"
    if snapshot.from_auto_update:
        return f"genai-prices data updated {snapshot.timestamp:%Y-%m-%d}, prices as of {day}"
    return f"bundled genai-prices {version} data, prices as of {day}"


__all__ = ["AUTO", "available", "bundled_price", "providers_for"]
