"""Exceptions raised by shekel.

Every error names what is wrong and how to fix it. None of them ever carries an API token.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "BudgetConfigError",
    "BudgetExceededError",
    "ForkedBudgetError",
    "PricingError",
    "RequestError",
    "ShekelError",
    "StoreError",
]


class ShekelError(Exception):
    """Base class of every error shekel raises."""


class BudgetConfigError(ShekelError, ValueError):
    """A ``budget()`` argument or a price is invalid. Raised when the budget is built, never mid-call."""


class PricingError(ShekelError, ValueError):
    """A price is missing or malformed for a model that a budget must price."""


class RequestError(ShekelError, ValueError):
    """A call's arguments say something shekel cannot reserve for (a ``max_tokens`` that is not a whole
    number, say). Raised before the request is sent; nothing is held or charged."""


class StoreError(ShekelError):
    """The store of a shared budget could not be reached or used.

    With ``on_store_error="closed"`` (the default) the call is refused before it is sent. The message names
    the store, never its password.
    """


class ForkedBudgetError(ShekelError, RuntimeError):
    """An in-process budget made before ``os.fork()`` was used in the child process.

    The child holds a private copy of the parent's ledger: spending it would allow a fresh cap per process.
    Share one cap between processes with a shared store (``budget(..., name=..., store=...)``).
    """


def _usd(amount: Decimal) -> str:
    text = f"{amount:.6f}".rstrip("0")
    return "$" + (text + "00" if text.endswith(".") else text)


#: What a refusal advises, by reason (the ``shekel`` command gives its own options instead).
USD_ADVICE = "Raise max_usd, lower max_tokens, or set fallback={'at_pct': ..., 'model': <a cheaper model>}."
CALLS_ADVICE = "Raise max_llm_calls, or catch BudgetExceededError to stop cleanly."
TOKENS_ADVICE = "Raise max_total_tokens or lower max_tokens."


class BudgetExceededError(ShekelError):
    """A budget cannot pay for a call, or has run out of calls.

    Raised *before* the HTTP request is sent, so the call that would pass the cap is never paid for.

    Attributes:
        spent: USD already spent in the budget that refused the call (float, for display).
        limit: That budget's ``max_usd`` (float), or ``None`` when a call or token limit refused it.
        budget_name: The name of the budget that refused the call.
        model: The model of the refused call, when known.
        needed: The worst-case cost (USD) the call would have needed.
        reserved: USD that calls in flight held in that budget when the call was refused.
        reason: ``"usd"``, ``"calls"`` or ``"tokens"``: which limit refused the call.
        waited: Seconds the call waited for calls in flight to settle before it was refused, or None.
    """

    def __init__(
        self,
        *,
        budget_name: str,
        spent: Decimal,
        limit: Decimal | None,
        model: str | None,
        needed: Decimal = Decimal(0),
        reason: str = "usd",
        calls: int = 0,
        max_calls: int | None = None,
        reserved: Decimal = Decimal(0),
        waited: float | None = None,
    ) -> None:
        self.budget_name = budget_name
        self.spent = float(spent)
        self.limit = None if limit is None else float(limit)
        self.model = model
        self.needed = float(needed)
        self.reserved = float(reserved)
        self.reason = reason
        self.spent_exact = spent
        self.limit_exact = limit
        #: Seconds the call waited for calls in flight to settle before it was refused (None: it did not).
        self.waited = waited
        message = self._message(spent, limit, needed, calls, max_calls, reserved)
        if waited is not None:
            message += f" (It waited {waited:.3g} s for calls in flight to settle.)"
        super().__init__(message)

    def _message(
        self,
        spent: Decimal,
        limit: Decimal | None,
        needed: Decimal,
        calls: int,
        max_calls: int | None,
        reserved: Decimal,
    ) -> str:
        who = f"budget {self.budget_name!r}"
        on = f" for model {self.model!r}" if self.model else ""
        if self.reason == "calls":
            return (
                f"{who} allows {max_calls} LLM calls and {calls} are used or in flight; the next call{on} "
                f"was not sent. {CALLS_ADVICE}"
            )
        if self.reason == "tokens":
            return f"{who} has no tokens left for the next call{on}; it was not sent. {TOKENS_ADVICE}"
        assert limit is not None
        remaining = max(limit - spent - reserved, Decimal(0))
        short = max(needed - remaining, Decimal(0))
        held = f", {_usd(reserved)} held by calls in flight" if reserved > 0 else ""
        return (
            f"{who} cannot pay for the next call{on}: spent {_usd(spent)} of {_usd(limit)}{held}, "
            f"{_usd(remaining)} left, and the call could cost up to {_usd(needed)} "
            f"({_usd(short)} over the cap). The request was not sent. {USD_ADVICE}"
        )
