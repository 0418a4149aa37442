"""``shekel prices``: the prices shekel charges, as ``shekel.prices()`` returns them."""

from __future__ import annotations

import argparse
import json
import os

from .. import _bundled_prices
from .._price_lookup import prices
from .._pricing import AUTO, Price
from .._pricing_files import ENV_VAR, env_pricing
from . import _args, _render
from ._codes import EXIT_ERROR, EXIT_OK


def _row(model: str, provider: str | None, price: Price) -> dict[str, str | None]:
    return {
        "model": model,
        "provider": price.provider or provider,
        "input_per_1m": str(price.input_per_1m.normalize()),
        "output_per_1m": str(price.output_per_1m.normalize()),
        "cached_input_per_1m": None
        if price.cached_input_per_token is None
        else str((price.cached_input_per_token * 1_000_000).normalize()),
        "source": price.source,
    }


def show(args: argparse.Namespace) -> int:
    rows: list[dict[str, str | None]] = []
    if args.model is not None:
        try:
            price = prices(args.model, provider=args.provider if args.provider is not None else AUTO)
        except Exception as error:  # a bad pricing file in SHEKEL_PRICING: say so in one line
            raise _args.UsageError(str(error)) from None
        if price is None:
            reason = _bundled_prices.unavailable_reason()
            _render.line(
                f"no price known for {args.model!r}"
                + (f" on {args.provider!r}" if args.provider else "")
                + (
                    f": {reason}"
                    if reason
                    else ": give one with price_per_1k_tokens, a pricing file, or SHEKEL_PRICING"
                ),
            )
            return EXIT_ERROR
        rows.append(_row(args.model, args.provider, price))
    else:
        table = env_pricing() if os.environ.get(ENV_VAR) else None
        if table is not None:
            if table.flat is not None:
                rows.append(_row("*", None, table.flat))
            rows.extend(_row(model, None, price) for model, price in sorted(table.per_model.items()))
            rows.extend(
                _row(model, provider, price)
                for (model, provider), price in sorted(table.per_provider.items())
            )
        for model, provider in _bundled_prices.bundled_models():
            if args.provider is not None and provider != args.provider:
                continue
            price = _bundled_prices.bundled_price(model, provider)
            if price is not None:
                rows.append(_row(model, provider, price))
        if args.provider is not None:
            rows = [r for r in rows if r["provider"] in (args.provider, None)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        reason = _bundled_prices.unavailable_reason()
        _render.line(f"no prices known here{': ' + reason if reason else ''}")
        return EXIT_OK
    _render.table(
        ["model", "provider", "input $/1M", "output $/1M", "source"],
        [
            [r["model"], r["provider"] or "-", r["input_per_1m"], r["output_per_1m"], r["source"]]
            for r in rows
        ],
        numeric_from=2,
        numeric_to=3,
    )
    return EXIT_OK
