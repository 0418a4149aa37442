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
import weakref
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from .ledger.shared import Figures

#: How many names' shares a process keeps (the least recently used idle one goes first).
MAX_SHARES = 4096


#: What a thread (and asyncio task, by id) holds in a share: (thread id, task id or None).
Owner = tuple[int, "int | None"]

#: How many of its latest charges a share remembers (to add back those a store's answer may predate).
RECENT = 4096


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
    #: The same, by who holds it: a call never waits for room its own thread or task holds.
    held_by: dict[Owner, list[int]] = field(default_factory=dict)
    #: Whether the process warned that the store cannot be used, since it last answered for this name.
    warned: bool = False
    #: How many live budget objects use it (one that none uses may be evicted).
    users: int = 0
    #: This process's latest charges, by sequence number: (seq, money, answered, input, output tokens).
    recent: deque[tuple[int, int, bool, int, int]] = field(default_factory=lambda: deque(maxlen=RECENT))

    def seen(self, figures: Figures, mark: int) -> None:
        """The store answered with the budget's figures, asked after charge ``mark``: they replace what this
        process counted, but for its charges since (the answer may predate them: counted again, never
        lost)."""
        self.spent, self.calls, self.failed = figures.spent, figures.calls, figures.failed
        self.input_tokens, self.output_tokens = figures.input_tokens, figures.output_tokens
        for seq, money, answered, input_tokens, output_tokens in reversed(self.recent):
            if seq <= mark:
                break  # numbered in order: the rest predate the answer
            self._add(money, answered, input_tokens, output_tokens)

    def hold(self, money: int, tokens: int, owner: Owner) -> None:
        self.held_money += money
        self.held_tokens += tokens
        self.held_calls += 1
        mine = self.held_by.setdefault(owner, [0, 0, 0])
        mine[0] += money
        mine[1] += tokens
        mine[2] += 1

    def unhold(self, money: int, tokens: int, owner: Owner) -> None:
        self.held_money -= money
        self.held_tokens -= tokens
        self.held_calls -= 1
        mine = self.held_by.get(owner)
        if mine is not None:
            mine[0] -= money
            mine[1] -= tokens
            mine[2] -= 1
            if mine[2] <= 0:
                del self.held_by[owner]

    def own(self, owner: Owner) -> tuple[int, int, int]:
        """What calls of ``owner``'s thread hold (of its task only, when it names one): (money, tokens,
        calls)."""
        thread, task = owner
        money = tokens = calls = 0
        for (each_thread, each_task), (m, t, c) in self.held_by.items():
            if each_thread == thread and (task is None or each_task is None or each_task == task):
                money, tokens, calls = money + m, tokens + t, calls + c
        return money, tokens, calls

    def charge(self, seq: int, money: int, answered: bool, input_tokens: int, output_tokens: int) -> None:
        self._add(money, answered, input_tokens, output_tokens)
        self.recent.append((seq, money, answered, input_tokens, output_tokens))

    def _add(self, money: int, answered: bool, input_tokens: int, output_tokens: int) -> None:
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
        self.recent.clear()


#: Guards every share and the registry (short sections only: no store is asked while it is held). Reentrant:
#: garbage collection may settle a dropped stream inside a section that holds it.
LOCK = threading.RLock()
_shares: OrderedDict[tuple[Hashable, str], Share] = OrderedDict()


def share_of(ledger_key: Hashable, name: str) -> Share:
    """The process's share of budget ``name`` in the store whose ledger is ``ledger_key``."""
    key = (ledger_key, name)
    with LOCK:
        share = _shares.get(key)
        if share is None:
            share = _shares[key] = Share()
            if len(_shares) > MAX_SHARES:
                idle = next((k for k, s in _shares.items() if k != key and _unused(s)), None)
                if idle is not None:
                    del _shares[idle]
        else:
            _shares.move_to_end(key)
        return share


def _unused(share: Share) -> bool:
    """No call holds in it and no live budget uses it: evicting it loses nothing a budget counts on."""
    return not share.held_calls and not share.users


def use(share: Share, user: object) -> None:
    """``user`` (a budget) uses ``share`` until it is garbage collected."""
    with LOCK:
        share.users += 1
    weakref.finalize(user, _unuse, share)


def _unuse(share: Share) -> None:
    with LOCK:  # reentrant: a finalizer may run inside a section that holds it
        share.users -= 1


#: Numbers the charges of the process's shares, in order: the last number given.
_last = 0


def next_seq() -> int:
    """The number of a new charge (:data:`LOCK` held)."""
    global _last
    _last += 1
    return _last


def mark() -> int:
    """The number of the last charge: a store's answer asked for after it counts the charges up to it."""
    return _last


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's calls in flight, and its own lock."""
    global LOCK
    LOCK = threading.RLock()
    for share in _shares.values():
        share.held_money = share.held_tokens = share.held_calls = 0
        share.held_by.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
