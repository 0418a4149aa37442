"""Exact money: every amount inside shekel is a ``Decimal``; floats exist only at the edge."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from numbers import Real

from .errors import BudgetConfigError

ZERO = Decimal(0)
THOUSAND = Decimal(1000)
MILLION = Decimal(1_000_000)
_TOO_LARGE = Decimal("1e15")


def to_decimal(value: object, *, what: str, fix: str) -> Decimal:
    """Convert a user-supplied amount to ``Decimal`` exactly as written.

    Floats go through ``repr`` so that ``0.001`` becomes ``Decimal("0.001")``, not its binary expansion.
    Raises ``ValueError`` naming ``what`` and ``fix`` for bools, non-numbers, NaN and infinities.
    """
    # Concrete types first: ``Real`` is an ABC, whose check costs several Python calls per amount.
    if isinstance(value, bool) or not isinstance(value, (float, int, Decimal, str, Real)):
        raise BudgetConfigError(f"{what} must be a number, got {value!r} ({type(value).__name__}). {fix}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BudgetConfigError(f"{what} must be a finite number, got {value!r}. {fix}")
    try:
        if isinstance(value, float):
            amount = Decimal(repr(value))
        else:
            amount = Decimal(value) if isinstance(value, (int, Decimal, str)) else Decimal(repr(float(value)))
    except (InvalidOperation, ValueError) as exc:
        raise BudgetConfigError(f"{what} must be a number, got {value!r}. {fix}") from exc
    if not amount.is_finite():
        raise BudgetConfigError(f"{what} must be a finite number, got {value!r}. {fix}")
    if amount.copy_abs() >= _TOO_LARGE:
        # Far past any real amount, and large enough to overflow Decimal arithmetic inside a later call.
        raise BudgetConfigError(f"{what} must be below 1e15, got {value!r}. {fix}")
    return amount
