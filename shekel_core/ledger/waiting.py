"""Waiting for room that calls in flight hold: one queue per tree of budgets, first come, first served.

A call that does not fit only because calls in flight hold the room waits for them to settle instead of
being refused. Threads block on an event of their own; asyncio tasks await a future, so the event loop
keeps running. Every settle or release in the tree wakes the waiters that may now fit.

Fairness: a call may take room only when no call that started waiting before it is blocked on a budget of
its own chain. So a big call is never starved by a stream of small ones arriving after it (they queue
behind it), and it never blocks them for longer than its own wait: it is served as soon as the calls in
flight settle, or gives up when its wait runs out. Waiters blocked on unrelated budgets (siblings in a tree)
do not hold each other up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Account


class Waiter:
    """One call waiting for room: the accounts of its chain and the one it is blocked on."""

    __slots__ = ("accounts", "blocked", "event", "future", "loop")

    def __init__(self, accounts: Collection[Account], blocked: Account) -> None:
        self.accounts = accounts
        self.blocked = blocked
        self.event: threading.Event | None = None
        self.future: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
            return
        future, loop = self.future, self.loop
        if future is not None and loop is not None and not future.done():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Tree:
    """What the budgets of one tree share: the lock that guards their accounts, the calls in flight (with
    the thread and task that made them) and the queue of calls waiting for room."""

    __slots__ = ("holds", "lock", "waiters")

    def __init__(self) -> None:
        # Reentrant: garbage collection may settle a dropped stream inside this thread's locked section.
        self.lock = threading.RLock()
        self.waiters: list[Waiter] = []
        #: Reservations in flight, by identity (dict: ordered and cheap to add to and remove from).
        self.holds: dict[Any, None] = {}

    def blocker(self, accounts: Collection[Account], waiter: Waiter | None = None) -> Account | None:
        """The account an earlier waiter is blocked on, among ``accounts``, or None when a call on them may
        take room now (``waiter``: the call's own place in the queue, if it has one)."""
        for earlier in self.waiters:
            if earlier is waiter:
                return None
            if earlier.blocked in accounts:
                return earlier.blocked
        return None

    def wake(self) -> None:
        """Wake every waiter that is first in line for its budget (call with the lock held)."""
        blocked: set[int] = set()
        for waiter in self.waiters:
            key = id(waiter.blocked)
            if key not in blocked:
                blocked.add(key)
                waiter.wake()
