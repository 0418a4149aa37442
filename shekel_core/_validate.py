"""Checking ``budget()`` arguments: each error names the value, what is wrong and how to fix it."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from decimal import Decimal

from ._money import ZERO, to_decimal
from .errors import BudgetConfigError

_FALLBACK_KEYS = frozenset({"at_pct", "model"})
_UNKNOWN_PRICE_POLICIES = ("warn", "raise", "zero")


def check_on_warn_signature(on_warn: object) -> None:
    """Refuse a callback that cannot take ``(spent, limit)`` now, not with a TypeError inside a later call."""
    if on_warn is None:
        return
    try:
        signature = inspect.signature(on_warn)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # no introspectable signature (some builtins): trust it
        return
    try:
        signature.bind(0.0, 0.0)
    except TypeError:
        raise BudgetConfigError(
            f"on_warn must accept two positional arguments, on_warn(spent, limit); {on_warn!r} takes "
            f"{signature}."
        ) from None


def limit(max_usd: object) -> Decimal | None:
    if max_usd is None:
        return None
    fix = "Pass max_usd as a positive number of US dollars, e.g. budget(max_usd=1.00), or None for no cap."
    amount = to_decimal(max_usd, what="max_usd", fix=fix)
    if amount <= 0:
        raise BudgetConfigError(f"max_usd must be greater than 0, got {max_usd!r}. {fix}")
    return amount


def warn_at(warn_at: object, limit: Decimal | None) -> Decimal | None:
    if warn_at is None:
        return None
    fix = "warn_at is a fraction of max_usd in (0, 1], e.g. warn_at=0.8 to be warned at 80%."
    fraction = to_decimal(warn_at, what="warn_at", fix=fix)
    if not (0 < fraction <= 1):
        raise BudgetConfigError(f"warn_at must be in (0, 1], got {warn_at!r}. {fix}")
    if limit is None:
        raise BudgetConfigError(f"warn_at={warn_at!r} needs max_usd: it is a fraction of the dollar cap.")
    return fraction


def fallback(fallback: object, limit: Decimal | None) -> tuple[Decimal, str | None]:
    if fallback is None:
        return ZERO, None
    fix = 'Use fallback={"at_pct": 0.8, "model": "<cheaper model id>"}.'
    if not isinstance(fallback, Mapping):
        raise BudgetConfigError(f"fallback must be a mapping, got {fallback!r}. {fix}")
    unknown = sorted(str(k) for k in fallback if k not in _FALLBACK_KEYS)
    if unknown:
        raise BudgetConfigError(f"fallback has unknown key(s) {', '.join(map(repr, unknown))}. {fix}")
    model = fallback.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BudgetConfigError(f"fallback needs a 'model' (a non-empty model id), got {model!r}. {fix}")
    at_pct = to_decimal(fallback.get("at_pct", 0.8), what="fallback['at_pct']", fix=fix)
    if not (0 < at_pct <= 1):
        raise BudgetConfigError(
            f"fallback['at_pct'] must be in (0, 1], got {fallback.get('at_pct')!r}. {fix}"
        )
    if limit is None:
        raise BudgetConfigError(f"fallback needs max_usd: it switches models at a share of the cap. {fix}")
    return at_pct, model


def max_calls(max_llm_calls: object) -> int | None:
    if max_llm_calls is None:
        return None
    if isinstance(max_llm_calls, bool) or not isinstance(max_llm_calls, int) or max_llm_calls < 1:
        raise BudgetConfigError(
            f"max_llm_calls must be a whole number of calls >= 1, got {max_llm_calls!r}. "
            "Pass e.g. max_llm_calls=20, or None for no call limit."
        )
    return max_llm_calls


def on_unknown(policy: object) -> str | None:
    if policy is None or policy in _UNKNOWN_PRICE_POLICIES:
        return policy
    raise BudgetConfigError(
        f"on_unknown_price must be 'warn', 'raise' or 'zero', got {policy!r}. 'warn' (the default) warns once "
        "per model, 'raise' refuses unpriced calls, 'zero' counts them as free without a warning."
    )


def max_total_tokens(max_total_tokens: object) -> int | None:
    if max_total_tokens is None:
        return None
    if isinstance(max_total_tokens, bool) or not isinstance(max_total_tokens, int) or max_total_tokens < 1:
        raise BudgetConfigError(
            f"max_total_tokens must be a whole number of tokens >= 1, got {max_total_tokens!r}. "
            "Pass e.g. max_total_tokens=100_000 (input plus output tokens), or None for no token limit."
        )
    return max_total_tokens


def wait(seconds: object) -> float | None:
    """``wait=``: seconds a call may wait for room that calls in flight hold (0: never, None: as long as
    calls are in flight)."""
    if seconds is None:
        return None
    fix = "Pass wait=60 (seconds), wait=0 to refuse at once, or wait=None to wait while calls are in flight."
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, Decimal)):
        raise BudgetConfigError(f"wait must be a number of seconds, got {seconds!r}. {fix}")
    value = float(seconds)
    if not (value >= 0) or value == float("inf"):
        raise BudgetConfigError(f"wait must be a finite number of seconds >= 0, got {seconds!r}. {fix}")
    if value > MAX_WAIT:
        raise BudgetConfigError(
            f"wait={seconds!r} is longer than a year: to wait as long as calls are in flight, pass wait=None."
        )
    return value


#: The longest finite ``wait`` (a year): beyond it, a timed wait overflows the platform's clock.
MAX_WAIT = 365 * 86400.0
