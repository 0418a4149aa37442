"""Review round 11: adoption of charges made while no window is stored (changes 7fda5cb)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shekel.ledger.shared import Ask, Charge, SharedLimits, Store, parse_window
from shekel.stores import SQLiteStore

from ..shared._clock import redis_clock, sqlite_clock

USD = 10**9


@pytest.fixture(params=["sqlite", "redis"])
def store_and_clock(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, Callable[[float], None]]]:
    if request.param == "sqlite":
        set_clock = sqlite_clock(monkeypatch, time.time())
        store: Store = SQLiteStore(tmp_path / "b.db")
        yield store, set_clock
    else:
        from shekel.stores import RedisStore

        redis_store = RedisStore(request.getfixturevalue("redis_store_url"))
        yield redis_store, redis_clock(redis_store)
        store = redis_store
    store.close()


def _limits(window: Any) -> SharedLimits:
    return SharedLimits("w", parse_window(window), 100 * USD, None, None)


def _ask(hold_id: str, money: int = USD, lease: float = 60.0) -> Ask:
    # $1 of input, nothing per output token: the hold is exactly `money`.
    return Ask(hold_id, "p1", money, 0, 1, 1, 1, 0, lease)


def test_a_late_settle_after_an_expiry_swept_by_a_read_is_counted_once(
    store_and_clock: tuple[Store, Callable[[float], None]],
) -> None:
    """Design: "if the worker was only slow and settles later, its real cost replaces that charge (never
    counted twice)". A call holds $1 (lease 60 s) on hourly budget "w"; the budget is reset (the call is in
    flight). Its lease runs out; a process READS "w" (b.spent): no window is stored, so the sweep charges
    the expired hold to window 'none', bucket 0, and remembers it there; the same read then adopts that
    bucket into its own window ('3600s', current bucket). The slow call settles for $1: the take-back
    looks for bucket ('none', 0), which adoption moved, finds nothing, and adds the real $1 on top of the
    expiry's $1. Spent $2 for one $1 call."""
    store, set_clock = store_and_clock
    start = time.time()
    set_clock(start)
    hourly = _limits("1h")
    store.reserve([hourly], _ask("h:1:slow"))
    store.reset("w")
    set_clock(start + 120)  # the lease (60 s) has run out
    assert store.read(hourly).spent == USD  # charged at its hold, as expired
    store.settle(["w"], "h:1:slow", Charge(USD, 1, 0, "ok"), ["3600s"])
    store.flush()
    assert store.read(hourly).spent == USD  # observed: 2 * USD


def test_a_no_window_budget_that_adopts_a_rolling_charge_does_not_expire(redis_store_url: str) -> None:
    """Redis: a budget with window=None accumulates until reset: its buckets hash must never expire. Two
    calls held under window "60s" are in flight when the budget is reset and reopened with window=None.
    The first settles into ('60s', now); a read of the no-window budget (b.spent) adopts it into
    ('none', 0) (no window is stored: a read stores none). The second settles into ('60s', now): `add`
    sets the TTL of the whole buckets hash, which now holds ('none', 0), to 2 x 60 + 60 = 180 s. The
    no-window reserve that follows adopts that bucket too, and `add` for 'none' sets no TTL but does not
    clear the one there (an HDEL of some fields keeps the key and its TTL). Every charge of the no-window
    budget lives in that hash, which Redis deletes 180 s later: all of its spend is gone (its cap becomes
    a cap per 3 minutes)."""
    import redis

    from shekel.stores import RedisStore

    store = RedisStore(redis_store_url)
    minute, forever = _limits(60), _limits(None)
    store.reserve([minute], _ask("h:1:a"))
    store.reserve([minute], _ask("h:1:b"))
    store.reset("w")
    store.settle(["w"], "h:1:a", Charge(USD, 1, 0, "ok"), ["60s"])
    store.flush()
    assert store.read(forever).spent == USD  # adopted
    store.settle(["w"], "h:1:b", Charge(USD, 1, 0, "ok"), ["60s"])
    store.flush()
    store.reserve([forever], _ask("h:1:c"))  # stores window 'none', adopts
    store.settle(["w"], "h:1:c", Charge(USD, 1, 0, "ok"))
    store.flush()
    assert store.read(forever).spent == 3 * USD
    with redis.Redis.from_url(redis_store_url) as client:
        ttl = client.ttl("shekel:{w}:buckets")
    store.close()
    assert ttl == -1  # observed: ~180 (seconds until every charge of the budget is deleted)


def test_a_late_settle_after_its_expiry_was_adopted_into_another_window_is_counted_once(
    store_and_clock: tuple[Store, Callable[[float], None]],
) -> None:
    """Found while fixing the above: the expiry is charged in the reader's window ('1h'); the budget is
    then opened with another window ('day'), whose first reserve adopts that charge into its own bucket.
    The record of the expiry moves with it, so the slow call's settle still takes it back."""
    store, set_clock = store_and_clock
    start = time.time()
    set_clock(start)
    hourly, daily = _limits("1h"), _limits("day")
    store.reserve([hourly], _ask("h:1:slow"))
    store.reset("w")
    set_clock(start + 120)
    assert store.read(hourly).spent == USD  # expired, charged in '1h'
    store.reserve([daily], _ask("h:1:next"))  # stores 'day', adopts the '1h' charge
    assert store.read(daily).spent == USD
    store.settle(["w"], "h:1:slow", Charge(USD // 2, 1, 0, "ok"), ["3600s"])
    store.flush()
    figures = store.read(daily)
    assert figures.spent == USD // 2  # the expiry's $1 taken back, the real $0.50 charged
    assert figures.reserved == USD  # h:1:next
