"""A hypothesis state machine per store: reserve / settle / release / lease expiry / late settle / time passing,
against a plain model of the ledger. The store's figures must equal the model's, and never pass the cap.

Two budgets in one store hold every call: ``a`` (money and tokens, over a rolling 60 s window of 1 s buckets)
and ``b`` (calls, no window). Time is virtual and always half-way through a second, leases end a quarter past
one, so nothing lands on a bucket's or a lease's edge: SQLite's clock is replaced, Redis's server clock is
moved by the store's offset (``RedisStore._clock_offset``) before each operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shekel.ledger.shared import Ask, Charge, Figures, SharedLimits, Store, StoreNoRoom, parse_window
from shekel.ledger.sqlite import SQLiteStore, _fit

from ._clock import redis_clock, sqlite_clock

A = SharedLimits("a", parse_window("60s"), max_nano=1500, max_calls=None, max_tokens=500)
B = SharedLimits("b", parse_window(None), max_nano=None, max_calls=12, max_tokens=None)
BUDGETS = [A, B]
MARGIN = 2


def _unclocked(figures: dict[str, Figures]) -> dict[str, Figures]:
    """The figures without when their window resets (the model does not say)."""
    return {name: replace(f, resets_at=None) for name, f in figures.items()}


@dataclass
class Book:
    """The model of one budget."""

    limits: SharedLimits
    charges: list[list[float]] = field(default_factory=list)  # [at, money, calls, failed, input, output]
    holds: dict[str, tuple[int, int, str, float]] = field(
        default_factory=dict
    )  # money, tokens, owner, deadline
    expired: dict[str, int] = field(default_factory=dict)  # hold id -> index of its charge

    def sweep(self, now: float) -> None:
        for hold_id, (money, tokens, _, deadline) in list(self.holds.items()):
            if deadline < now:
                del self.holds[hold_id]
                self.expired[hold_id] = len(self.charges)
                self.charges.append([now, money, 0, 1, tokens, 0])

    def figures(self, now: float) -> Figures:
        window = self.limits.window
        first = window.first_bucket(now)
        counted = [c for c in self.charges if window.bucket(c[0]) >= first]
        return Figures(
            spent=int(sum(c[1] for c in counted)),
            reserved=sum(h[0] for h in self.holds.values()),
            calls=int(sum(c[2] for c in counted)),
            failed=int(sum(c[3] for c in counted)),
            inflight=len(self.holds),
            input_tokens=int(sum(c[4] for c in counted)),
            output_tokens=int(sum(c[5] for c in counted)),
            reserved_tokens=sum(h[1] for h in self.holds.values()),
            resets_at=None,
        )

    def own(self, owner: str) -> tuple[int, int, int]:
        mine = [h for h in self.holds.values() if h[2] == owner]
        return sum(h[0] for h in mine), sum(h[1] for h in mine), len(mine)


class LedgerMachine(RuleBasedStateMachine):
    store: Store
    make_store: Any = None  # set per store: () -> (store, set_clock(now))

    def __init__(self) -> None:
        super().__init__()
        self.store, self.set_clock, self.cleanup = type(self).make_store()
        self.now = 1_800_000_000.5
        self.books = {b.name: Book(b) for b in BUDGETS}
        self.held: dict[str, int] = {}  # hold id -> money held (the same on both budgets)
        self.count = 0
        self.late_out_of_window = False

    def teardown(self) -> None:
        self.cleanup()

    def _clock(self) -> None:
        self.set_clock(self.now)

    @rule(
        owner=st.sampled_from(["w1", "w2"]),
        prompt=st.integers(1, 20),
        max_tokens=st.none() | st.integers(1, 30),
        lease=st.integers(1, 20),
        patient=st.booleans(),
    )
    def reserve(self, owner: str, prompt: int, max_tokens: int | None, lease: int, patient: bool) -> None:
        self.count += 1
        hold_id = f"host:1:{self.count}"
        ask = Ask(
            hold_id,
            owner,
            prompt * 3,
            5,
            prompt,
            max_tokens,
            max_tokens or 40,
            MARGIN,
            lease + 0.25,
            patient=patient,
        )
        for book in self.books.values():
            book.sweep(self.now)
        state = [
            (b, self.books[b.name].figures(self.now), partial(self.books[b.name].own, owner)) for b in BUDGETS
        ]
        try:
            expected = _fit(state, ask)
        except StoreNoRoom as refused:
            expected_refusal: StoreNoRoom | None = refused
        else:
            expected_refusal = None
        self._clock()
        try:
            grant = self.store.reserve(BUDGETS, ask)
        except StoreNoRoom as refused:
            assert expected_refusal is not None, f"refused ({refused}) where the model grants {expected}"
            assert (refused.name, refused.reason, refused.waitable, refused.needed) == (
                expected_refusal.name,
                expected_refusal.reason,
                expected_refusal.waitable,
                expected_refusal.needed,
            )
            return
        assert expected_refusal is None, f"granted {grant} where the model refuses ({expected_refusal})"
        assert (grant.max_tokens, grant.money, grant.tokens, _unclocked(grant.figures)) == (
            expected.max_tokens,
            expected.money,
            expected.tokens,
            _unclocked(expected.figures),
        )
        for book in self.books.values():
            book.holds[hold_id] = (grant.money, grant.tokens, owner, self.now + ask.lease)
        self.held[hold_id] = grant.money

    def _charge(self, hold_id: str, fraction: float, answered: bool) -> None:
        money = int(self.held.pop(hold_id) * fraction)
        charge = Charge(money, 3, 4 if answered else 0, "ok" if answered else "error")
        self._clock()
        self.store.settle(list(self.books), hold_id, charge)
        for book in self.books.values():
            if book.holds.pop(hold_id, None) is None and hold_id in book.expired:
                index = book.expired.pop(hold_id)
                window = book.limits.window
                if window.bucket(book.charges[index][0]) < window.first_bucket(self.now):
                    self.late_out_of_window = True
                book.charges[index] = [book.charges[index][0], 0, 0, 0, 0, 0]
            book.charges.append([self.now, money, int(answered), int(not answered), 3, 4 if answered else 0])

    @precondition(lambda self: self.held)
    @rule(data=st.data(), fraction=st.sampled_from([0.0, 0.5, 1.0]), answered=st.booleans())
    def settle(self, data: st.DataObject, fraction: float, answered: bool) -> None:
        """Settle a call: in time, or after its lease ran out and it was charged its hold (then replaced)."""
        self._charge(data.draw(st.sampled_from(sorted(self.held))), fraction, answered)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.held)))
        del self.held[hold_id]
        self._clock()
        self.store.release(list(self.books), hold_id)
        for book in self.books.values():
            book.holds.pop(hold_id, None)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), extra=st.integers(0, 5))
    def renew(self, data: st.DataObject, extra: int) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.held)))
        self._clock()
        self.store.renew(list(self.books), hold_id, extra + 1.25)
        for book in self.books.values():
            if hold_id in book.holds:
                money, tokens, owner, _ = book.holds[hold_id]
                book.holds[hold_id] = (money, tokens, owner, self.now + extra + 1.25)

    @rule(seconds=st.sampled_from([1, 2, 5, 13, 30, 61, 200]))
    def advance(self, seconds: int) -> None:
        self.now += seconds

    @invariant()
    def figures_equal_the_model_and_stay_under_the_caps(self) -> None:
        for limits in BUDGETS:
            book = self.books[limits.name]
            book.sweep(self.now)
            self._clock()
            got = self.store.read(limits)
            expected = book.figures(self.now)
            assert replace(got, resets_at=None) == expected, (
                limits.name,
                got,
                expected,
            )
            if limits.max_nano is not None and not self.late_out_of_window:
                assert got.spent + got.reserved <= limits.max_nano
            if limits.max_calls is not None:
                assert got.calls + got.failed + got.inflight <= limits.max_calls
            if limits.max_tokens is not None:
                assert got.input_tokens + got.output_tokens + got.reserved_tokens <= limits.max_tokens


SETTINGS = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)


def test_the_sqlite_store_matches_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_clock = sqlite_clock(monkeypatch, 0.0)
    runs = iter(range(10**6))

    def make() -> Any:
        store = SQLiteStore(tmp_path / f"{next(runs)}.db")
        return store, set_clock, store.close

    machine = type("SQLiteLedger", (LedgerMachine,), {"make_store": staticmethod(make)})
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_the_redis_store_matches_the_model(redis_store_url: str) -> None:
    from shekel.stores import RedisStore

    def make() -> Any:
        store = RedisStore(redis_store_url)
        store._client.flushdb()
        return store, redis_clock(store), store.close

    machine = type("RedisLedger", (LedgerMachine,), {"make_store": staticmethod(make)})
    run_state_machine_as_test(machine, settings=SETTINGS)
