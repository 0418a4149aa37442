"""4. Concurrency: 1,000 asyncio tasks, and 32 threads, sharing one budget.

Throughput: the same work with no budget (shekel not installed) and inside one shared budget far from its
limit, in-process. Overshoot: the same crowd against a budget that can pay for only part of the demand; the
overshoot is ``max(0, spent - max_usd)`` computed exactly in ``Decimal`` and must be exactly $0, and every
reservation must be back to zero once all calls have ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import shekel
from shekel import BudgetExceededError

from . import _transport
from ._harness import Row, Spread, median, paired_ratio, time_batches

TASKS = 1000
THREADS = 32
CALLS_PER_THREAD = 20
#: Room for about 40% of the demand at the costliest answer (31 input + 100 output tokens a call).
CALL_COST = Decimal(31) * Decimal("0.0002") / 1000 + Decimal(100) * Decimal("0.0006") / 1000
#: Each answer of the overshoot runs waits this long, so that calls overlap as over a network.
OVERSHOOT_LATENCY = 0.002


def _async_work(tasks: int, budget_kwargs: dict[str, object] | None) -> tuple[int, int, shekel.Budget | None]:
    async def main() -> tuple[int, int, shekel.Budget | None]:
        client = _transport.async_client()
        async with client:
            await client.chat_completion(_transport.MESSAGES, max_tokens=100)  # open the session first

            async def one() -> bool:
                try:
                    await client.chat_completion(_transport.MESSAGES, max_tokens=100)
                except BudgetExceededError:
                    return False
                return True

            if budget_kwargs is None:
                results = await asyncio.gather(*(one() for _ in range(tasks)))
                b = None
            else:
                async with shekel.budget(**budget_kwargs) as b:  # type: ignore[arg-type]
                    results = await asyncio.gather(*(one() for _ in range(tasks)))
        ok = sum(results)
        return ok, tasks - ok, b

    return asyncio.run(main())


def _thread_work(
    threads: int, per_thread: int, budget_kwargs: dict[str, object] | None
) -> tuple[int, int, shekel.Budget | None]:
    client = _transport.client()

    def work() -> tuple[int, int]:
        done = refused = 0
        for _ in range(per_thread):
            try:
                client.chat_completion(_transport.MESSAGES, max_tokens=100)
                done += 1
            except BudgetExceededError:
                refused += 1
        return done, refused

    def crowd() -> list[tuple[int, int]]:
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(shekel.carry(work)) for _ in range(threads)]
            return [f.result() for f in futures]

    if budget_kwargs is None:
        results, b = crowd(), None
    else:
        with shekel.budget(**budget_kwargs) as b:  # type: ignore[arg-type]
            results = crowd()
    return sum(r[0] for r in results), sum(r[1] for r in results), b


def _roomy() -> dict[str, object]:
    return {"max_usd": 1_000_000, "price_per_1k_tokens": _transport.PRICES}


def _tight(total_calls: int) -> dict[str, object]:
    limit = CALL_COST * int(total_calls * 0.4)
    return {"max_usd": limit, "price_per_1k_tokens": {"input": "0.0002", "output": "0.0006"}}


def _throughput_row(
    name: str, run: Callable[[dict[str, object] | None], object], total: int, repeats: int
) -> Row:
    def none(n: int) -> None:
        for _ in range(n):
            shekel.uninstall()
            run(None)

    def shared(n: int) -> None:
        for _ in range(n):
            run(_roomy())

    times = time_batches({"no budget": none, "one shared budget": shared}, number=1, repeats=repeats)
    shekel.uninstall()
    base, with_b = median(times.wall["no budget"]), median(times.wall["one shared budget"])
    ratio = paired_ratio(times, "one shared budget", "no budget")
    wall = paired_ratio(times.wall, "one shared budget", "no budget")
    return Row(
        group="4. concurrency",
        name=f"{name}: throughput",
        baseline="no budget",
        time_text=f"{total / with_b:,.0f} vs {total / base:,.0f} calls/s",
        time_ratio=ratio,
        wall_ratio=wall,
        extra={"throughput": total / with_b, "baseline_throughput": total / base},
    )


def _overshoot_row(
    name: str, run: Callable[[dict[str, object] | None], tuple[int, int, shekel.Budget | None]], total: int
) -> Row:
    """The crowd against a budget for about 40% of its demand, every answer as costly as allowed."""
    kwargs = _tight(total)
    with _transport.in_process(OVERSHOOT_LATENCY, worst_case=True) as in_flight:
        done, refused, b = run(kwargs)
    assert b is not None
    limit = Decimal(kwargs["max_usd"])  # type: ignore[arg-type]
    spent = b.spent_exact
    overshoot = max(spent - limit, Decimal(0))
    consistent = b.reserved == 0 and b.calls == done and done + refused == total
    return Row(
        group="4. concurrency",
        name=f"{name}: overshoot",
        baseline=f"limit ${limit.normalize()}",
        time_text=f"{done} paid, {refused} refused, up to {in_flight.peak} in flight; "
        f"spent ${spent.normalize()} ({spent / limit:.1%})",
        target="exactly $0",
        ok=overshoot == 0 and consistent,
        calls_text=f"overshoot ${overshoot}",
        extra={
            "overshoot": str(overshoot),
            "spent": str(spent),
            "limit": str(limit),
            "reserved_after": b.reserved,
            "peak_in_flight": in_flight.peak,
        },
    )


def run(quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    tasks = 200 if quick else TASKS
    threads_total = THREADS * CALLS_PER_THREAD
    with _transport.in_process():

        def async_run(kwargs: dict[str, object] | None) -> tuple[int, int, shekel.Budget | None]:
            return _async_work(tasks, kwargs)

        def thread_run(kwargs: dict[str, object] | None) -> tuple[int, int, shekel.Budget | None]:
            return _thread_work(THREADS, CALLS_PER_THREAD, kwargs)

        repeats = 3 if quick else 7
        rows.append(_throughput_row(f"{tasks:,} asyncio tasks", async_run, tasks, repeats))
        rows.append(
            _throughput_row(
                f"{THREADS} threads x {CALLS_PER_THREAD} calls", thread_run, threads_total, repeats
            )
        )
    rows.append(_overshoot_row(f"{tasks:,} asyncio tasks", async_run, tasks))
    rows.append(_overshoot_row(f"{THREADS} threads x {CALLS_PER_THREAD} calls", thread_run, threads_total))
    shekel.uninstall()
    return rows


__all__ = ["Spread", "run"]
