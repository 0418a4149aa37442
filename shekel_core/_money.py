"""Exact money: every amount inside shekel is a ``Decimal``; floats exist only at the edge."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded, getcontext, localcontext
from numbers import Real
from typing import ParamSpec, TypeVar

from .errors import BudgetConfigError

ZERO = Decimal(0)
THOUSAND = Decimal(1000)
MILLION = Decimal(1_000_000)
_TOO_LARGE = Decimal("1e15")

#: Digits money arithmetic needs to stay exact: Python's default, enough for amounts up to 1e15 USD at
#: per-token prices down to 1e-12. A narrower context is replaced by ``_MONEY_CONTEXT``.
MONEY_PRECISION = 28
_MONEY_CONTEXT = Context(prec=40)

P = ParamSpec("P")
R = TypeVar("R")


def exact_money(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with enough decimal precision for exact money, whatever the caller's decimal context.

    An application may lower ``decimal.getcontext().prec`` or trap ``Inexact`` for its own work; shekel's
    charges must neither be rounded by it nor fail on the divisions a reservation makes. The usual context is
    left alone (one check), any other is swapped for shekel's own.
    """

    @functools.wraps(fn)
    def exact(*args: P.args, **kwargs: P.kwargs) -> R:
        context = getcontext()
        if context.prec >= MONEY_PRECISION and not (context.traps[Inexact] or context.traps[Rounded]):
            return fn(*args, **kwargs)
        with localcontext(_MONEY_CONTEXT):
            return fn(*args, **kwargs)

    return exact


def to_decimal(value: object, *, what: str, fix: str, below: Decimal = _TOO_LARGE) -> Decimal:
    """Convert a user-supplied amount to ``Decimal`` exactly as written.

    Floats go through ``repr`` so that ``0.001`` becomes ``Decimal("0.001")``, not its binary expansion.
    Raises ``ValueError`` naming ``what`` and ``fix`` for bools, non-numbers, NaN and infinities, and for
    amounts of ``below`` (a power of ten) or more, either way.
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
    if amount.copy_abs() >= below:
        # Far past any real amount, and large enough to overflow Decimal arithmetic inside a later call.
        raise BudgetConfigError(f"{what} must be below 1e{below.adjusted()}, got {value!r}. {fix}")
    return amount
