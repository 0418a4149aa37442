"""Listeners to what budgets do: each settled call and each refusal, for telemetry (OpenTelemetry, the
``shekel run`` live line).

A listener is called in the thread that settled or refused the call, after the ledger is updated and
outside its lock. Listeners must be quick and must not raise: an exception in one is swallowed (telemetry
fails open; the cap does not depend on it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._budget import Budget
    from ._records import CallRecord
    from .errors import ShekelError


@dataclass(frozen=True, slots=True)
class Settled:
    """A call was charged: ``record`` as the innermost budget keeps it, ``budgets`` the chain it was
    charged to (innermost first), ``reserved`` what it had held, ``duration`` seconds from its reservation
    to its settlement."""

    record: CallRecord
    budgets: tuple[Budget, ...]
    reserved: Decimal
    duration: float


@dataclass(frozen=True, slots=True)
class Refused:
    """A call was refused before it was sent: ``error`` says why (``BudgetExceededError`` or
    ``PricingError``), ``budget`` is the innermost budget of the call."""

    error: ShekelError
    budget: Budget
    model: str | None


@dataclass(frozen=True, slots=True)
class Reserved:
    """A call was held on ``budgets`` (innermost first), before it is sent."""

    budgets: tuple[Budget, ...]


Listener = Callable[[Any], None]
_listeners: tuple[Listener, ...] = ()
_lock = threading.Lock()


def subscribe(listener: Listener) -> None:
    """Call ``listener(event)`` with every :class:`Reserved`, :class:`Settled` and :class:`Refused` event.
    Idempotent. Listeners ignore the kinds of event they do not know."""
    global _listeners
    with _lock:
        if listener not in _listeners:
            _listeners = (*_listeners, listener)


def unsubscribe(listener: Listener) -> None:
    global _listeners
    with _lock:
        _listeners = tuple(each for each in _listeners if each is not listener)


def listening() -> bool:
    return bool(_listeners)


def emit(event: Settled | Refused | Reserved) -> None:
    for listener in _listeners:
        with contextlib.suppress(Exception):  # telemetry fails open
            listener(event)
