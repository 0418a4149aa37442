"""Review round 15a: what a process spends while its store is down never reaches the store, and the
share forgets it at the store's first answer."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from shekel import BudgetExceededError, budget
from shekel.stores import SQLiteStore
from shekel.testing import FakeInferenceServer

from ._helpers import MESSAGES, PRICES

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient

CALL_COST = Decimal("0.015")  # a call ("hi there", max_tokens=5) as the server reports it; it holds $0.058


def test_a_store_that_comes_and_goes_does_not_give_the_process_its_cap_again_each_time(
    server: FakeInferenceServer, tmp_path: Path
) -> None:
    """docs/shared-budgets.md, "When the store is down": "each process holds itself to the budget's limits
    against its share, so processes may together pass the cap by what remained of it when the store went
    down, once per process"; the share is "its figures (spend, calls, tokens) as the store last gave them,
    plus what this process's calls spent since".

    One process, `max_usd=0.10`, on_store_error="open". The store is unreachable for a while (here another
    connection holds the SQLite file's write lock; on a network, a partition), then answers one read (a
    health check reading `b.spent`, or `shekel run`'s monitor, which reads it four times a second), and is
    unreachable again; six times. Each time it is down the process spends its share to the refusal (3
    calls, $0.045). Expected: one process passes the cap by what remained when the store went down
    ($0.10), once: at most $0.20 in all. Observed: $0.27 (18 calls) and growing with every outage; the
    store never counts any of it (`spent` $0 there).

    Cause: `_sharing._share_answers` calls hold and charge only the share (`Share.charge` in
    `_sharing.settle`; `reservation.shared` is empty, so no store is ever told); the first figures the
    store gives again (`sharing.figures` from `b.spent`, or a grant in `_apply`) go through `Share.seen`,
    which replaces the share's spend with the store's, which never had it."""
    path = tmp_path / "budgets.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    client = InferenceClient(base_url=server.url)
    b = budget(max_usd=0.10, name="svc", store=store, on_store_error="open", price_per_1k_tokens=PRICES)
    health = [b.spent_exact]  # the store answers: the budget is opened there
    with b:
        for _ in range(6):
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # the store cannot be used
            with pytest.raises(BudgetExceededError):  # this process's share refuses, in time
                for _ in range(10):
                    client.chat_completion(MESSAGES, model="m", max_tokens=5)
            lock.execute("ROLLBACK")
            lock.close()
            health.append(b.spent_exact)  # the store answers again (a health check reads the budget)
    spent = CALL_COST * server.request_count
    in_store = b.spent_exact
    assert spent <= Decimal("0.20"), (
        f"one process spent ${spent} ({server.request_count} calls) of a $0.10 cap; the store counts ${in_store}"
    )
