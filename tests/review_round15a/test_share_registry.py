"""Review round 15a: the registry of shares (``shekel_core/_shares.py``) and its 4,096-name limit."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pytest

from shekel import Budget, BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

from ._helpers import MESSAGES, PRICES, Restartable

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient


def test_a_name_in_use_keeps_its_one_share_while_other_names_come_and_go(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    """docs/shared-budgets.md, "When the store is down": "There is one share per name and store in a
    process, whichever budget objects open it (a budget opened per request, or by `@budget(...)`, too; a
    process keeps the shares of the 4,096 names it used last)", and "each process holds itself to the
    budget's limits against its share".

    A service keeps one budget object for its own name, `svc = budget(max_usd=0.10, name="svc", ...,
    on_store_error="open")`, made at start-up, and opens a budget per request for each tenant. The store is
    down. 4,096 tenants' requests come in; then `svc` spends to its refusal (3 calls, $0.045: it is the name
    used last); then a helper opens the same name for one more call, `with budget(max_usd=0.10,
    name="svc", ...)`. Expected: the helper's budget has svc's share ($0.045 spent) and its call (worst
    case $0.058) is refused, as `svc`'s next call is. Observed: the helper's budget reports $0 spent and
    its call is sent: two shares of one name in the process, each held to the cap on its own.

    Cause: `share_of` (the only place that touches the LRU order) runs in `budget()` (`_shared_part`), not
    when a budget is used; the share of a name whose only object was made before 4,096 other names is the
    oldest entry, and is dropped once idle (`held_calls == 0`) however often the object is used. The
    object keeps using its dropped share; any budget made later for the name gets a fresh one."""
    client = InferenceClient(base_url=server.url)

    def of(name: str, max_usd: float) -> Budget:
        return budget(
            max_usd=max_usd, name=name, store=redis.url, on_store_error="open", price_per_1k_tokens=PRICES
        )

    svc = of("svc", 0.10)  # made at start-up, used for the life of the process
    redis.stop()
    for tenant in range(4096):  # per-request budgets of the tenants
        with of(f"tenant:{tenant}", 1.0):
            pass
    with svc, pytest.raises(BudgetExceededError):
        for _ in range(10):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert svc.spent_exact == Decimal("0.045")  # svc's share, the store being down
    sent = server.request_count
    helper = of("svc", 0.10)
    seen = helper.spent_exact  # the share of "svc", the store being down
    with helper:
        with contextlib.suppress(BudgetExceededError):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert (seen, server.request_count - sent) == (svc.spent_exact, 0), (
        f"a new budget of 'svc' sees ${seen} spent (svc: ${svc.spent_exact}) and sent "
        f"{server.request_count - sent} call(s) past the share's refusal"
    )
