"""A cap you can reach: calls wait for room that calls in flight hold, instead of being refused.

Through the real ``InferenceClient`` against the local server (with a delay, so calls overlap), and through
the ledger's own API where the order of events must be controlled exactly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

import shekel
from shekel import BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "Summarise this item of work in one line, please."}]


def _batch_server(server: FakeInferenceServer) -> FakeInferenceServer:
    server.latency = 0.05  # a server that answers in 50 ms: 16 calls are always in flight
    return server


# ------------------------------------------------------------------------------------------ the batch
def test_a_batch_on_16_threads_spends_at_least_90_percent_of_the_cap(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=_batch_server(server).url)
    outcomes: list[str] = []

    def work(_: int) -> None:
        try:
            client.chat_completion(MESSAGES, model="m", max_tokens=10)
            outcomes.append("ran")
        except BudgetExceededError:
            outcomes.append("refused")

    with budget(max_usd=1.00, price_per_1k_tokens=PRICES) as b:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(shekel.carry(work), range(200)))
    assert Decimal("0.90") <= b.spent_exact <= Decimal("1.00"), b.summary()
    assert server.request_count == b.calls == outcomes.count("ran")  # every request charged once
    assert b.failed_calls == 0 and b.reserved == 0 and b.calls_in_flight == 0
    assert sum(r.cost for r in b.records) == b.spent_exact


async def test_200_asyncio_tasks_spend_at_least_90_percent_of_the_cap(server: FakeInferenceServer) -> None:
    client = AsyncInferenceClient(base_url=_batch_server(server).url)

    async def work() -> str:
        try:
            await client.chat_completion(MESSAGES, model="m", max_tokens=10)
            return "ran"
        except BudgetExceededError:
            return "refused"

    async with budget(max_usd=1.00, price_per_1k_tokens=PRICES) as b:
        outcomes = await asyncio.gather(*(work() for _ in range(200)))
    await client.close()
    assert Decimal("0.90") <= b.spent_exact <= Decimal("1.00"), b.summary()
    assert server.request_count == b.calls == outcomes.count("ran")
    assert b.reserved == 0 and b.calls_in_flight == 0


def test_wait_zero_refuses_at_once_as_before(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=_batch_server(server).url)
    refused: list[BudgetExceededError] = []

    def work(_: int) -> None:
        try:
            client.chat_completion(MESSAGES, model="m", max_tokens=10)
        except BudgetExceededError as exc:
            refused.append(exc)

    with budget(max_usd=1.00, price_per_1k_tokens=PRICES, wait=0) as b:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(shekel.carry(work), range(60)))
    assert b.spent_exact <= Decimal("1.00")
    assert refused and all(exc.waited is None for exc in refused)
    assert any(exc.reserved > 0 for exc in refused), "refused while calls in flight held the room"


def test_max_llm_calls_slots_held_in_flight_are_waited_for(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=_batch_server(server).url)
    ran: list[int] = []

    def work(i: int) -> None:
        try:
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
            ran.append(i)
        except BudgetExceededError as exc:
            assert exc.reason == "calls"  # refused only once every slot is used (after waiting for one)

    with budget(max_llm_calls=10, price_per_1k_tokens=PRICES) as b:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(shekel.carry(work), range(30)))
    assert len(ran) == b.calls == server.request_count == 10


# ------------------------------------------------------------------------------------------ refusals
def test_a_call_that_could_never_fit_is_refused_at_once(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.05, price_per_1k_tokens=PRICES) as b:
        held = b.reserve(model="m", prompt_tokens=5, max_tokens=5)  # something in flight, elsewhere
        with pytest.raises(BudgetExceededError) as refused:
            threading_result(lambda: client.chat_completion(MESSAGES, model="m", max_tokens=100))
        b.release(held)
    assert refused.value.waited is None and server.request_count == 0


def threading_result(fn: Any) -> Any:
    """Run ``fn`` in another thread (carrying the budget) and return or raise what it did there."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=shekel.carry(run))
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_a_wait_that_runs_out_refuses_and_says_so(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.10, price_per_1k_tokens=PRICES, wait=0.2) as b:
        held = b.reserve(model="m", prompt_tokens=5, max_tokens=40)  # $0.089 held, never settled in time
        with pytest.raises(BudgetExceededError, match=r"waited 0\.2\d* s for calls in flight") as refused:
            threading_result(lambda: client.chat_completion(MESSAGES, model="m", max_tokens=10))
        b.release(held)
    assert refused.value.waited is not None and refused.value.waited >= 0.2
    assert server.request_count == 0 and b.reserved == 0 and b.calls_in_flight == 0


def test_a_stream_held_by_the_same_thread_does_not_deadlock_a_nested_call(
    server: FakeInferenceServer,
) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.20, price_per_1k_tokens=PRICES, wait=None) as b:
        stream = client.chat_completion(MESSAGES, model="m", max_tokens=40, stream=True)  # holds $0.148
        next(iter(stream))
        with pytest.raises(BudgetExceededError) as refused:  # only this thread's own stream holds the room
            client.chat_completion(MESSAGES, model="m", max_tokens=10)
        for _ in stream:
            pass
    assert refused.value.waited is None and b.calls == 1


async def test_a_stream_held_by_the_same_task_does_not_deadlock_a_nested_call(
    server: FakeInferenceServer,
) -> None:
    client = AsyncInferenceClient(base_url=server.url)
    async with budget(max_usd=0.20, price_per_1k_tokens=PRICES, wait=None) as b:
        stream = await client.chat_completion(MESSAGES, model="m", max_tokens=40, stream=True)
        await stream.__anext__()
        with pytest.raises(BudgetExceededError) as refused:
            await client.chat_completion(MESSAGES, model="m", max_tokens=10)
        async for _ in stream:
            pass
    await client.close()
    assert refused.value.waited is None and b.calls == 1


async def test_a_stream_held_by_another_task_is_waited_for(server: FakeInferenceServer) -> None:
    client = AsyncInferenceClient(base_url=server.url)
    async with budget(max_usd=0.20, price_per_1k_tokens=PRICES, wait=None) as b:
        stream = await client.chat_completion(MESSAGES, model="m", max_tokens=40, stream=True)
        second = asyncio.ensure_future(client.chat_completion(MESSAGES, model="m", max_tokens=10))
        await asyncio.sleep(0.05)
        assert not second.done(), "the second call waits for the stream's hold"
        async for _ in stream:  # the event loop keeps running: the stream is read while the call waits
            pass
        await second
    await client.close()
    assert b.calls == 2 and b.spent_exact <= Decimal("0.20")


async def test_a_cancelled_waiter_holds_nothing(server: FakeInferenceServer) -> None:
    client = AsyncInferenceClient(base_url=server.url)
    loop = asyncio.get_running_loop()
    async with budget(max_usd=0.10, price_per_1k_tokens=PRICES, wait=None) as b:
        # Held by a call of another thread: the task's own holds would make it refuse at once instead.
        held = await loop.run_in_executor(
            None, shekel.carry(lambda: b.reserve(model="m", prompt_tokens=5, max_tokens=40))
        )
        waiter = asyncio.ensure_future(client.chat_completion(MESSAGES, model="m", max_tokens=10))
        await asyncio.sleep(0.05)
        assert not waiter.done() and len(b._tree.waiters) == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert b._tree.waiters == [] and b.spent_exact == 0 and b.calls_in_flight == 1
        assert b._account.reserved == held.cost
        b.release(held)
        await client.chat_completion(MESSAGES, model="m", max_tokens=10)  # the room is all there again
    await client.close()
    assert server.request_count == 1 and b.calls == 1 and b.reserved == 0


# ------------------------------------------------------------------------------------------ fairness
def test_first_come_first_served_a_big_call_is_not_starved_by_small_ones() -> None:
    """A big call waiting for room is served before small calls that arrive after it, even though each of
    them would fit sooner; the small ones go as soon as the big one has its room."""
    order: list[str] = []
    b = budget(max_usd=1.00, price_per_1k_tokens=PRICES)
    with b:
        first = b.reserve(model="m", prompt_tokens=0, max_tokens=250)  # $0.504 held by a call in flight
        big = threading.Thread(target=shekel.carry(lambda: _reserve_and_log(b, "big", 400, order)))
        big.start()
        _wait_for_waiters(b, 1)
        smalls = [
            threading.Thread(target=shekel.carry(lambda i=i: _reserve_and_log(b, f"small{i}", 10, order)))
            for i in range(3)
        ]
        for thread in smalls:
            thread.start()
        _wait_for_waiters(b, 4)  # the small calls would fit now ($0.024 each), but queue behind the big one
        assert order == []
        b.settle(first, shekel.Usage(0, 10), streamed=False, source="test")  # $0.02: now the big one fits
        for thread in (big, *smalls):
            thread.join()
    assert order[0] == "big" and sorted(order[1:]) == ["small0", "small1", "small2"]
    assert b.spent_exact <= Decimal("1.00") and b.reserved == 0


def _reserve_and_log(b: shekel.Budget, name: str, max_tokens: int, order: list[str]) -> None:
    reservation = b.reserve(model="m", prompt_tokens=0, max_tokens=max_tokens)
    order.append(name)
    b.settle(reservation, shekel.Usage(0, max_tokens), streamed=False, source="test")


def _wait_for_waiters(b: shekel.Budget, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(b._tree.waiters) < count:
        assert time.monotonic() < deadline, "the waiters never queued"
        time.sleep(0.005)


def test_a_waiter_on_one_branch_does_not_hold_up_calls_on_another() -> None:
    root = budget(max_usd=10, price_per_1k_tokens=PRICES)
    with root:
        left, right = budget(max_usd=0.5, name="left"), budget(max_usd=0.5, name="right")
        with left:
            held = left.reserve(model="m", prompt_tokens=0, max_tokens=200)  # $0.404 of left's $0.50
        order: list[str] = []
        thread = threading.Thread(
            target=lambda: _in(left, lambda: _reserve_and_log(left, "left", 100, order))
        )
        thread.start()
        _wait_for_waiters(left, 1)
        with right:  # right's call shares only the root, which has room: it is not queued behind left's
            _reserve_and_log(right, "right", 100, order)
        assert order == ["right"]
        left.settle(held, shekel.Usage(0, 10), streamed=False, source="test")
        thread.join()
    assert order == ["right", "left"] and root.reserved == 0


def _in(b: shekel.Budget, fn: Any) -> None:
    with b:
        fn()


def test_nested_the_wait_is_on_the_budget_that_lacks_room_and_any_settle_wakes_it() -> None:
    outer = budget(max_usd=0.30, price_per_1k_tokens=PRICES, name="outer")
    with outer:
        inner = budget(max_usd=5, name="inner")
        with inner:
            held = outer.reserve(model="m", prompt_tokens=0, max_tokens=100)  # $0.204 held on outer only
            result = threading_result_later(lambda: inner.reserve(model="m", prompt_tokens=0, max_tokens=60))
            _wait_for_waiters(outer, 1)
            assert outer._tree.waiters[0].blocked is outer._account  # inner has room: outer is short
            outer.release(held)
            reservation = result()
            inner.settle(reservation, shekel.Usage(0, 60), streamed=False, source="test")
    assert inner.calls == outer.calls == 1 and outer.reserved == 0


def threading_result_later(fn: Any) -> Any:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=shekel.carry(lambda: box.setdefault("value", fn())))
    thread.start()

    def result() -> Any:
        thread.join()
        return box["value"]

    return result


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("wait", [-1, float("nan"), float("inf"), "60", True])
def test_bad_wait_is_refused_at_budget_time(wait: Any) -> None:
    with pytest.raises(shekel.BudgetConfigError, match="wait"):
        budget(max_usd=1, wait=wait)


def test_wait_is_inherited_and_defaults_to_60_seconds() -> None:
    with budget(max_usd=1) as outer:
        with budget(max_usd=1) as inner:
            assert inner.wait == outer.wait == 60
    with budget(max_usd=1, wait=5):
        with budget(max_usd=1) as inner:
            assert inner.wait == 5
            with budget(max_usd=1, wait=None) as innermost:
                assert innermost.wait is None
