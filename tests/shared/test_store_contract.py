"""What every store does, through the :class:`Store` interface, for SQLite and Redis alike: calendar windows
at their UTC boundaries, exact integers near 2**53, the log, names, describe and reset, and many processes
on one cap (zero overshoot, and the cap reachable)."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from shekel.ledger.shared import (
    MAX_EXACT_NANO,
    Ask,
    Charge,
    SharedLimits,
    Store,
    StoreNoRoom,
    new_hold_id,
    parse_window,
)
from shekel.stores import SQLiteStore

from ._clock import redis_clock, sqlite_clock


@pytest.fixture(params=["sqlite", "redis"])
def store_and_clock(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, Callable[[float], None]]]:
    """A store, and a function that sets its clock (SQLite: the module's time; Redis: the server's, offset)."""
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


def _ask(hold_id: str, max_tokens: int | None = 5, lease: float = 600.0) -> Ask:
    return Ask(hold_id, "me", 30, 5, 10, max_tokens, max_tokens or 40, 2, lease)


def _at(text: str) -> float:
    # strptime, not fromisoformat: Python 3.10's reads no fraction shorter than 3 digits ("59.5").
    form = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(text, form).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("window", "before", "after"),
    [
        ("day", "2026-03-01T23:59:59.5", "2026-03-02T00:00:00.5"),
        ("week", "2026-03-08T23:59:59.5", "2026-03-09T00:00:00.5"),  # Sunday -> Monday
        ("month", "2024-02-29T23:59:59.5", "2024-03-01T00:00:00.5"),  # a leap year's February
        ("month", "2026-12-31T23:59:59.5", "2027-01-01T00:00:00.5"),
        ("month", "2100-02-28T23:59:59.5", "2100-03-01T00:00:00.5"),  # not a leap year
    ],
)
def test_a_calendar_window_resets_at_its_utc_boundary_and_not_before(
    store_and_clock: tuple[Store, Callable[[float], None]], window: str, before: str, after: str
) -> None:
    store, set_clock = store_and_clock
    limits = SharedLimits("t", parse_window(window), 10**9, None, None)
    set_clock(_at(before) - 3600 * 5)  # earlier in the same period
    store.reserve([limits], _ask("h:1:1"))
    store.settle(["t"], "h:1:1", Charge(700, 1, 1, "ok"))
    set_clock(_at(before))
    figures = store.read(limits)
    assert figures.spent == 700
    assert figures.resets_at == pytest.approx(_at(after) - 0.5)
    set_clock(_at(after))
    assert store.read(limits).spent == 0


def test_a_rolling_window_counts_a_charge_for_w_to_w_plus_one_bucket(
    store_and_clock: tuple[Store, Callable[[float], None]],
) -> None:
    store, set_clock = store_and_clock
    limits = SharedLimits("r", parse_window("60s"), 10**9, None, None)  # buckets of 1 s
    start = 1_900_000_000.5
    set_clock(start)
    store.reserve([limits], _ask("h:1:1"))
    store.settle(["r"], "h:1:1", Charge(9, 1, 1, "ok"))
    for later, counted in ((59.9, True), (60.4, True), (61.6, False)):
        set_clock(start + later)
        assert (store.read(limits).spent == 9) is counted, later


def test_money_stays_exact_near_two_to_the_53(store_and_clock: tuple[Store, Callable[[float], None]]) -> None:
    store, set_clock = store_and_clock
    set_clock(time.time())
    cap = MAX_EXACT_NANO - 1
    limits = SharedLimits("big", parse_window(None), cap, None, None)
    ask = Ask("h:1:1", "me", cap - 13, 1, 1, None, 10**6, 2, 600.0)  # room for exactly 11 output tokens
    grant = store.reserve([limits], ask)
    assert (grant.max_tokens, grant.money) == (11, cap)
    store.settle(["big"], "h:1:1", Charge(cap - 1, 1, 1, "ok"))
    assert store.read(limits).spent == cap - 1
    with pytest.raises(StoreNoRoom) as refused:
        store.reserve([limits], Ask("h:1:2", "me", 1, 1, 1, 1, 1, 2, 600.0))
    assert refused.value.reason == "usd" and refused.value.figures.spent == cap - 1


def test_the_holds_totals_follow_every_way_a_hold_ends(
    store_and_clock: tuple[Store, Callable[[float], None]],
) -> None:
    """A reserve reads running totals of the holds, not every hold: they must match the holds as holds are
    taken, settled, released and expired, and the refusal's "waitable" still sees this process's own."""
    store, set_clock = store_and_clock
    now = time.time()
    set_clock(now)
    limits = SharedLimits("many", parse_window(None), 10**15, None, None)
    grants = {}
    for i in range(300):  # every third hold has a short lease, to expire below
        ask = Ask(f"h:1:{i}", "me", 30 + i, 5, 10, 5 + i % 7, 5, 2, 60.0 if i % 3 == 2 else 600.0)
        grants[ask.hold_id] = store.reserve([limits], ask)
    figures = store.read(limits)
    assert figures.inflight == 300
    assert figures.reserved == sum(g.money for g in grants.values())
    assert figures.reserved_tokens == sum(g.tokens for g in grants.values())

    for i in range(0, 300, 3):
        store.settle([limits.name], f"h:1:{i}", Charge(7, 1, 1, "ok"))
    for i in range(1, 300, 3):
        store.release([limits.name], f"h:1:{i}")
    store.flush()
    left = [g for h, g in grants.items() if int(h.rsplit(":", 1)[1]) % 3 == 2]
    figures = store.read(limits)
    assert (figures.inflight, figures.spent) == (100, 700)
    assert figures.reserved == sum(g.money for g in left)

    small = SharedLimits("many", parse_window(None), 700 + figures.reserved, None, None)
    with pytest.raises(StoreNoRoom) as mine:  # every hold in the way is this owner's: waiting cannot help
        store.reserve([small], _ask("h:1:mine"))
    assert not mine.value.waitable
    with pytest.raises(StoreNoRoom) as theirs:
        store.reserve([small], Ask("h:2:1", "other", 30, 5, 10, 5, 5, 2, 600.0))
    assert theirs.value.waitable

    set_clock(now + 120)  # the 60 s leases end: each hold is charged what it held
    figures = store.read(limits)
    assert (figures.inflight, figures.reserved, figures.reserved_tokens) == (0, 0, 0)
    assert figures.spent == 700 + sum(g.money for g in left)


def test_log_names_describe_and_reset(store_and_clock: tuple[Store, Callable[[float], None]]) -> None:
    store, set_clock = store_and_clock
    set_clock(time.time())
    a = SharedLimits("tenant:1", parse_window("day"), 5000, 3, None)
    b = SharedLimits("tenant:2", parse_window(None), None, None, 900)
    store.reserve([a, b], _ask("host-x:1:1"))
    store.settle(["tenant:1", "tenant:2"], "host-x:1:1", Charge(120, 10, 4, "ok", model="m|x", provider="p"))
    assert store.names() == ["tenant:1", "tenant:2"]
    described = store.describe("tenant:1")
    assert described is not None
    assert (described["window"], described["max_nano"], described["max_calls"], described["max_tokens"]) == (
        "day",
        5000,
        3,
        None,
    )
    assert store.describe("nobody") is None
    (entry,) = store.log("tenant:2")
    assert {k: entry[k] for k in ("name", "model", "provider", "input_tokens", "output_tokens")} == {
        "name": "tenant:2",
        "model": "m|x",
        "provider": "p",
        "input_tokens": 10,
        "output_tokens": 4,
    }
    assert (entry["cost_nano"], entry["estimated"], entry["expired"], entry["outcome"], entry["host"]) == (
        120,
        0,
        0,
        "ok",
        "host-x",
    )
    assert len(store.log()) == 2 and store.log(since=entry["at"] + 1) == []
    store.reset("tenant:1")
    assert store.read(a).spent == 0 and store.names() == ["tenant:2"] and store.read(b).spent == 120


def test_the_log_says_which_shekel_runs_a_call_was_made_in_settled_or_expired(
    store_and_clock: tuple[Store, Callable[[float], None]],
) -> None:
    """A hold id made for a call of `shekel run` runs carries their ids; the log gives them back as `runs`
    for a settled call and for a hold its lease ended (a crashed worker of the run), so that each run
    reports its own calls."""
    store, set_clock = store_and_clock
    now = time.time()
    set_clock(now)
    limits = SharedLimits("job", parse_window(None), None, None, None)
    settled, crashed, plain = (
        new_hold_id("0a1b2c3d4e5f6071.8899aabbccddeeff"),
        new_hold_id("0a1b2c3d4e5f6071"),
        new_hold_id(),
    )
    for hold_id in (settled, crashed, plain):
        store.reserve([limits], _ask(hold_id, lease=5.0))
    store.settle(["job"], settled, Charge(100, 5, 5, "ok"))
    store.settle(["job"], plain, Charge(100, 5, 5, "ok"))
    set_clock(now + 10)  # the crashed worker's lease ran out
    store.read(limits)
    runs = sorted((e["expired"], e["runs"]) for e in store.log("job"))
    assert runs == [(0, []), (0, ["0a1b2c3d4e5f6071", "8899aabbccddeeff"]), (1, ["0a1b2c3d4e5f6071"])]
    assert all("hold" not in e for e in store.log("job"))


# ------------------------------------------------------------------------------------------ many processes
def _worker(spec: str, seed: int, calls: int) -> tuple[int, int, int]:
    """Reserve and settle in a loop until the shared cap refuses for good: (money charged, calls, refusals)."""
    from shekel.stores import open_store

    store = open_store(spec)
    limits = SharedLimits("fleet", parse_window(None), 2_000_000, None, None)
    rng = random.Random(seed)
    charged = made = waited = 0
    for i in range(calls):
        hold_id = f"w{seed}:{i}:x"
        try:
            grant = store.reserve([limits], Ask(hold_id, f"w{seed}", 500, 5, 10, None, 400, 2, 600.0))
        except StoreNoRoom as refused:
            if not refused.waitable:
                break
            waited += 1
            time.sleep(0.001)
            continue
        if rng.random() < 0.1:
            store.release(["fleet"], hold_id)
            continue
        cost = rng.randint(grant.money // 2, grant.money)  # never more than held
        store.settle(["fleet"], hold_id, Charge(cost, 10, 1, "ok"))
        charged += cost
        made += 1
    return charged, made, waited


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_four_processes_spend_a_shared_cap_without_passing_it_and_reach_it(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    spec = (
        f"sqlite:///{tmp_path / 'b.db'}" if kind == "sqlite" else request.getfixturevalue("redis_store_url")
    )
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results: list[Any] = pool.starmap(_worker, [(spec, seed, 20_000) for seed in range(4)])
    from shekel.stores import open_store

    figures = open_store(spec).read(SharedLimits("fleet", parse_window(None), 2_000_000, None, None))
    charged = sum(r[0] for r in results)
    assert figures.spent == charged <= 2_000_000  # zero overshoot
    assert figures.calls == sum(r[1] for r in results) and figures.reserved == 0
    assert charged >= 0.9 * 2_000_000, f"only {charged} of 2,000,000 spent: {results}"


def test_a_sqlite_file_written_before_the_holds_totals_gets_them_from_its_holds(tmp_path: Path) -> None:
    """A file from a version without the ``held`` table (or its triggers): the first connection makes them
    and fills them from the holds already there, in one transaction."""
    import sqlite3

    path = tmp_path / "old.db"
    limits = SharedLimits("old", parse_window(None), 10**15, None, None)
    store = SQLiteStore(path)
    a = store.reserve([limits], _ask("h:1:1"))
    b = store.reserve([limits], _ask("h:1:2"))
    store.close()
    with sqlite3.connect(path) as db:  # back to the older layout, holds in flight
        for trigger in ("held_on_insert", "held_on_delete", "held_on_update"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DROP TABLE held")

    again = SQLiteStore(path)
    figures = again.read(limits)
    assert (figures.inflight, figures.reserved) == (2, a.money + b.money)
    again.settle([limits.name], "h:1:1", Charge(3, 1, 1, "ok"))
    again.release([limits.name], "h:1:2")
    figures = again.read(limits)
    assert (figures.inflight, figures.reserved, figures.spent) == (0, 0, 3)
    again.close()
