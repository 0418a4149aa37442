"""Review round 15a: the process's share of a shared budget (806b40c) loses a charge of this process when
a store answer that predates the charge arrives after it."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from shekel import BudgetExceededError, budget
from shekel.stores import RedisStore
from shekel.testing import FakeInferenceServer

from ._helpers import MESSAGES, PRICES, Restartable

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient

from shekel._usage import Usage  # noqa: E402  (what an adapter settles a call with)


def test_a_charge_made_while_another_reserve_is_answered_is_not_lost_from_the_share(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    """docs/shared-budgets.md, "When the store is down": the share is "its figures (spend, calls, tokens) as
    the store last gave them, plus what this process's calls spent since, plus what its calls in flight
    hold", and "processes may together pass the cap by what remained of it when the store went down, once
    per process".

    One asyncio process, `max_usd=0.10`, store up. Call A (a big one) is in flight; task B reserves a small
    call; the store answers B's reserve while the event loop is busy (`time.sleep` stands for any
    synchronous work of another task), and in that same stretch A finishes and is settled (its settle is
    sent in a task, as the async adapters do). Store: A $0.085 + B $0.003 = $0.088 spent, $0.012 left.
    The store then goes down. Expected: the share says $0.088, and a call whose worst case is $0.058 is
    refused (at most $0.012 may be passed). Observed: the share says $0.003 (A's charge is gone) and three
    more calls are sent: $0.133 of a $0.10 cap from one process.

    Cause: `_sharing.settle` charges the share (`Share.charge`) at once; `_sharing._apply` of B's grant,
    which runs later, calls `Share.seen(grant.figures[name])`, which *replaces* spent/calls/tokens with
    the store's figures as B's reserve saw them, before A's settle reached the store. Any store answer
    (a grant, or `Store.read` through `sharing.figures` from `b.spent`) that crosses a settle of this
    process does the same; Redis reserves even overtake settles in flight by design (`_redis_wire`)."""
    url = redis.url
    b = budget(max_usd=0.10, name="svc", store=url, on_store_error="open", price_per_1k_tokens=PRICES)

    async def scenario() -> None:
        # A: 5 prompt tokens, up to 40 out: holds $0.089, costs $0.085.
        a = await b.areserve_call(("m", 5, 40, 40, None), asyncio.current_task())
        # B: 1 prompt token, 1 out: holds $0.007, costs $0.003 (both fit together: $0.096).
        task_b = asyncio.create_task(b.areserve_call(("m", 1, 1, 1, None), None))
        for _ in range(10):  # B's reserve is sent to Redis
            await asyncio.sleep(0)
        time.sleep(0.3)  # the loop is busy: Redis answers B's reserve meanwhile
        b.settle(a, Usage(5, 40), streamed=False, source="test")  # A ends in the same stretch
        reservation_b = await task_b  # B's grant is applied
        b.settle(reservation_b, Usage(1, 1), streamed=False, source="test")
        await asyncio.sleep(0.5)  # both settles reach the store

    asyncio.run(scenario())
    logged = sum(int(e["cost_nano"]) for e in RedisStore(url).log("svc"))  # read without the budget
    assert logged == 88_000_000  # the store has both calls ($0.088): $0.012 left

    redis.stop()
    client = InferenceClient(base_url=server.url)
    sent = 0
    with b:
        try:
            for _ in range(10):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)  # worst case $0.058
                sent += 1
        except BudgetExceededError:
            pass
        share = b.spent_exact  # the share (the store is down)
    total = Decimal("0.088") + Decimal("0.015") * sent
    assert (sent, share) == (0, Decimal("0.088")), (
        f"store down: {sent} calls sent, the share says ${share}; the process spent ${total} of $0.10 "
        "with $0.012 left when the store went down"
    )
