"""The process's shares of shared budgets (``shekel._shares``): one per name and store, kept for the names
used last, never evicted while a budget uses one or a call holds in it."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from shekel import _shares as shares
from shekel import budget


def test_the_registry_keeps_the_names_used_last_and_never_a_share_a_budget_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shares, "_shares", type(shares._shares)())
    monkeypatch.setattr(shares, "MAX_SHARES", 3)
    kept = budget(max_usd=1, name="in-use", store=f"sqlite:///{tmp_path / 'b.db'}")
    for n in range(6):
        shares.share_of("ledger", f"idle-{n}")
    assert [name for _, name in shares._shares] == ["in-use", "idle-4", "idle-5"]
    assert (
        kept._shared is not None
        and shares.share_of(kept._shared.store.ledger_key, "in-use") is kept._shared.seen
    )

    del kept
    gc.collect()
    for n in range(6, 9):
        shares.share_of("ledger", f"idle-{n}")
    assert [name for _, name in shares._shares] == ["idle-6", "idle-7", "idle-8"]  # bounded


def test_a_share_with_calls_in_flight_is_not_evicted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shares, "_shares", type(shares._shares)())
    monkeypatch.setattr(shares, "MAX_SHARES", 2)
    busy = shares.share_of("ledger", "busy")
    busy.hold(100, 10, (1, None))
    for n in range(4):
        shares.share_of("ledger", f"idle-{n}")
    assert "busy" in [name for _, name in shares._shares]
    busy.unhold(100, 10, (1, None))
    assert (busy.held_money, busy.held_calls, busy.held_by) == (0, 0, {})
