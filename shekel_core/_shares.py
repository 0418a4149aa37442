"""This process's share of each shared budget (one name in one store's ledger): the budget's figures as the
store last gave them, plus what this process's calls spent since, and what its calls in flight hold.

A budget with ``on_store_error="open"`` and no window is held to its limits against its share while the
store is down; fallback models and ``warn_at`` of every shared budget read the share's spend. There is one
share per name and ledger in the process, whichever budget objects open it (a budget opened per request
too), kept for the :data:`MAX_SHARES` names used last.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from .ledger.shared import Figures

#: How many names' shares a process keeps (the least recently used idle one goes first).
MAX_SHARES = 4096


@dataclass(slots=True, eq=False)
class Share:
    """One shared budget as this process knows it. Money in nano-dollars. Change it under :data:`LOCK`."""

    spent: int = 0
    calls: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: What this process's calls in flight under the name hold (held in the store, or by the share).
    held_money: int = 0
    held_tokens: int = 0
    held_calls: int = 0

    def seen(self, figures: Figures) -> None:
        """The store answered with the budget's figures: they replace what this process counted."""
        self.spent, self.calls, self.failed = figures.spent, figures.calls, figures.failed
        self.input_tokens, self.output_tokens = figures.input_tokens, figures.output_tokens

    def hold(self, money: int, tokens: int) -> None:
        self.held_money += money
        self.held_tokens += tokens
        self.held_calls += 1

    def unhold(self, money: int, tokens: int) -> None:
        self.held_money -= money
        self.held_tokens -= tokens
        self.held_calls -= 1

    def charge(self, money: int, answered: bool, input_tokens: int, output_tokens: int) -> None:
        self.spent += money
        if answered:
            self.calls += 1
        else:
            self.failed += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def clear(self) -> None:
        """The budget was reset from this process: nothing spent (calls in flight still hold)."""
        self.spent = self.calls = self.failed = self.input_tokens = self.output_tokens = 0


#: Guards every share and the registry (short sections only: no store is asked while it is held).
LOCK = threading.Lock()
_shares: OrderedDict[tuple[Hashable, str], Share] = OrderedDict()


def share_of(ledger_key: Hashable, name: str) -> Share:
    """The process's share of budget ``name`` in the store whose ledger is ``ledger_key``."""
    key = (ledger_key, name)
    with LOCK:
        share = _shares.get(key)
        if share is None:
            share = _shares[key] = Share()
            if len(_shares) > MAX_SHARES:
                idle = next((k for k, s in _shares.items() if not s.held_calls and k != key), None)
                if idle is not None:
                    del _shares[idle]
        else:
            _shares.move_to_end(key)
        return share


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's calls in flight, and its own lock."""
    global LOCK
    LOCK = threading.Lock()
    for share in _shares.values():
        share.held_money = share.held_tokens = share.held_calls = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
