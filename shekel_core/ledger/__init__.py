"""The ledger: what each budget has spent and holds, and the rules for holding more.

A call holds its worst case on every budget of its chain before it is sent (``reserve``), and is charged
its real cost after (``settle``), or gives the hold back (``release``). The budgets of a chain may keep
their accounts in different places: in this process (:mod:`shekel.ledger.memory`), or in a store shared by
many processes (SQLite, Redis: :mod:`shekel.stores`). ``Budget`` decides *what* a call holds (prices,
fallback models, output tokens); the ledger decides whether it fits, atomically, and keeps the figures.

Money in the in-memory ledger is exact ``Decimal``; stores keep integer nano-dollars, rounded so that the
cap stays safe (holds and charges up).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from .._money import ZERO

if TYPE_CHECKING:
    from .._budget import Budget

#: Extra output tokens held per call: some providers report one token more than ``max_tokens``.
OUTPUT_MARGIN_TOKENS = 2

#: Outcomes of a call that was sent: answered (charged its usage), answered with an error (4xx/5xx: costs
#: nothing, but the request counts against ``max_llm_calls``), or unknown after the request left (a
#: timeout, a dropped connection, a cancellation: charged what it held, since the provider most likely did
#: the work).
OK, ERROR, UNKNOWN = "ok", "error", "unknown"


class Account:
    """The figures of one budget as this process's in-memory ledger keeps them.

    ``calls`` are calls answered, ``failed`` requests that were sent and failed (error answers and unknown
    outcomes); both count against ``max_calls``, as do the ``inflight`` ones.
    """

    __slots__ = (
        "budget",
        "calls",
        "failed",
        "inflight",
        "input_tokens",
        "limit",
        "max_calls",
        "max_tokens",
        "output_tokens",
        "reserved",
        "reserved_tokens",
        "spent",
    )

    def __init__(
        self, budget: Budget, limit: Decimal | None, max_calls: int | None, max_tokens: int | None
    ) -> None:
        self.budget = budget
        self.limit = limit
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.spent = ZERO
        self.reserved = ZERO
        self.calls = 0
        self.failed = 0
        self.inflight = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.reserved_tokens = 0

    def tokens_room(self) -> int:
        assert self.max_tokens is not None
        return self.max_tokens - self.input_tokens - self.output_tokens - self.reserved_tokens


class NoRoom(Exception):
    """A call does not fit in ``account`` (``reason``: ``"usd"``, ``"calls"`` or ``"tokens"``).

    ``needed`` is the money the call would hold (for ``"usd"``). Raised inside the ledger's lock; the budget
    turns it into :class:`shekel.BudgetExceededError`, or waits when calls in flight hold the room.
    """

    def __init__(self, reason: str, account: Account, needed: Decimal = ZERO) -> None:
        super().__init__(reason)
        self.reason = reason
        self.account = account
        self.needed = needed
        #: What the call asked for: (input cost, output price per token, prompt tokens, max_tokens, model).
        self.ask: tuple[Decimal, Decimal, int, int | None, str | None] | None = None


__all__ = ["ERROR", "OK", "OUTPUT_MARGIN_TOKENS", "UNKNOWN", "Account", "NoRoom"]
