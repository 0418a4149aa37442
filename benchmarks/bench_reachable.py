"""7. A cap you can reach: the fraction of a $1 cap a batch spends, refusing at once vs waiting.

The issue's scenario, over real HTTP to ``shekel.testing.FakeInferenceServer`` answering in 50 ms: 200 work
items, one chat call each (``max_tokens=10``), on ``ThreadPoolExecutor(16)`` with ``shekel.carry``, and the
same as 200 asyncio tasks, inside ``budget(max_usd=1.00)``. Each call holds about $0.071 (its worst case)
and costs $0.01 to $0.025. ``wait=0`` refuses a call as soon as calls in flight hold the room (what shekel
did before); the default ``wait`` lets it wait for them. Overshoot must be exactly $0 either way.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from huggingface_hub import AsyncInferenceClient, InferenceClient

import shekel
from shekel import BudgetExceededError
from shekel.testing import FakeInferenceServer

from ._harness import Row

ITEMS = 200
THREADS = 16
CAP = Decimal("1.00")
PRICES = {"input": 1.0, "output": 2.0}
MESSAGES = [{"role": "user", "content": "Summarise this item of work in one line, please."}]
TARGET = Decimal("0.90")


def _threads(url: str, wait: float) -> tuple[int, shekel.Budget]:
    client = InferenceClient(base_url=url)
    ran: list[bool] = []

    def work(_: int) -> None:
        try:
            client.chat_completion(MESSAGES, model="m", max_tokens=10)
            ran.append(True)
        except BudgetExceededError:
            ran.append(False)

    with shekel.budget(max_usd=CAP, price_per_1k_tokens=PRICES, wait=wait) as b:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(shekel.carry(work), range(ITEMS)))
    return sum(ran), b


def _tasks(url: str, wait: float) -> tuple[int, shekel.Budget]:
    async def main() -> tuple[int, shekel.Budget]:
        async with AsyncInferenceClient(base_url=url) as client:

            async def one() -> bool:
                try:
                    await client.chat_completion(MESSAGES, model="m", max_tokens=10)
                    return True
                except BudgetExceededError:
                    return False

            async with shekel.budget(max_usd=CAP, price_per_1k_tokens=PRICES, wait=wait) as b:
                ran = sum(await asyncio.gather(*(one() for _ in range(ITEMS))))
        return ran, b

    return asyncio.run(main())


def run(quick: bool = False) -> list[Row]:
    rows = []
    with FakeInferenceServer(latency=0.05) as server:
        for label, scenario in (("16 threads", _threads), ("200 asyncio tasks", _tasks)):
            spent: dict[str, Decimal] = {}
            for mode, wait in (("refuse at once (wait=0)", 0.0), ("wait for room (wait=60)", 60.0)):
                server.reset()
                ran, b = scenario(server.url, wait)
                spent[mode] = b.spent_exact
                overshoot = max(b.spent_exact - CAP, Decimal(0))
                waited = wait > 0
                rows.append(
                    Row(
                        group="7. reachable cap",
                        name=f"{label}, {ITEMS} items, 50 ms server: {mode}",
                        baseline="$1.00 cap",
                        time_text=f"{ran} ran, {ITEMS - ran} refused; spent ${b.spent_exact} "
                        f"({b.spent_exact / CAP:.1%} of the cap); {server.request_count} requests",
                        calls_text=f"overshoot ${overshoot}",
                        target="≥ 90% spent, $0 over" if waited else "$0 over",
                        ok=overshoot == 0
                        and server.request_count == b.calls == ran
                        and (not waited or b.spent_exact >= TARGET * CAP),
                        extra={"spent": str(b.spent_exact), "ran": ran, "wait": wait},
                    )
                )
    return rows
