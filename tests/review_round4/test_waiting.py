"""Waiting for room (``wait=``): deadlocks, calls refused that fit, messages.

docs/hard-caps.md: "No deadlock. A call never waits for room that its own thread (or, in asyncio, its own
task) holds: a stream it is still reading, say. It is then refused at once, as before."
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

import shekel
from shekel import BudgetConfigError, BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

from .conftest import MESSAGES, PRICES, run_script

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient

_SYNC_DEADLOCK = """
import sys, threading, time
from huggingface_hub import InferenceClient
import shekel
from shekel import budget, BudgetExceededError
from shekel.testing import FakeInferenceServer

server = FakeInferenceServer(chunk_delay=0.01).start()
client = InferenceClient(base_url=server.url)
P = {"input": 1.0, "output": 2.0}
MSG = [{"role": "user", "content": "hi"}]
with budget(max_usd=0.25, price_per_1k_tokens=P, wait=None) as b:
    stream = client.chat_completion(MSG, model="m", max_tokens=60, stream=True)   # holds $0.165
    def big():
        try:
            client.chat_completion(MSG, model="m", max_tokens=80)   # fits only once the stream settles: waits
        except BudgetExceededError:
            pass
    threading.Thread(target=shekel.carry(big), daemon=True).start()
    time.sleep(0.3)
    client.chat_completion(MSG, model="m", max_tokens=2)   # fits right now ($0.085 left, needs ~$0.009)
    print("small call ran", flush=True)
    for _ in stream:
        pass
print("done", flush=True)
"""

_ASYNC_DEADLOCK = """
import asyncio
from huggingface_hub import AsyncInferenceClient
from shekel import budget, BudgetExceededError
from shekel.testing import FakeInferenceServer

server = FakeInferenceServer(chunk_delay=0.01).start()
P = {"input": 1.0, "output": 2.0}
MSG = [{"role": "user", "content": "hi"}]

async def main():
    async with AsyncInferenceClient(base_url=server.url) as c:
        async with budget(max_usd=0.25, price_per_1k_tokens=P, wait=None):
            stream = await c.chat_completion(MSG, model="m", max_tokens=60, stream=True)
            async def big():
                try:
                    await c.chat_completion(MSG, model="m", max_tokens=80)
                except BudgetExceededError:
                    pass
            task = asyncio.create_task(big())
            await asyncio.sleep(0.3)
            await c.chat_completion(MSG, model="m", max_tokens=2)
            print("small call ran", flush=True)
            async for _ in stream:
                pass
            await task
    print("done", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("code", [_SYNC_DEADLOCK, _ASYNC_DEADLOCK], ids=["threads", "asyncio"])
def test_a_call_that_fits_does_not_queue_behind_a_waiter_that_waits_for_its_own_stream(code: str) -> None:
    """A thread (task) reading a stream makes a small call that fits now. Another call, which fits only once
    that stream settles, is already waiting. First come, first served puts the small call behind it, and the
    waiter waits for the stream the small call's thread will never finish reading: with ``wait=None`` both
    wait forever (with the default ``wait=60`` the small call is held up for a minute)."""
    done = run_script(code, timeout=20)
    assert done is not None, "deadlock: the small call was still waiting after 20 s (killed)"
    assert "small call ran" in done.stdout and "done" in done.stdout, done.stderr[-2000:]


def test_a_call_that_fits_is_not_held_up_by_a_waiter_for_its_own_stream_with_a_finite_wait(
    server: FakeInferenceServer,
) -> None:
    server.chunk_delay = 0.01
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.25, price_per_1k_tokens=PRICES, wait=4) as b:
        stream = client.chat_completion(MESSAGES, model="m", max_tokens=60, stream=True)

        def big() -> None:
            with pytest.raises(BudgetExceededError):
                client.chat_completion(MESSAGES, model="m", max_tokens=80)

        thread = threading.Thread(target=shekel.carry(big))
        thread.start()
        time.sleep(0.3)
        assert len(b._tree.waiters) == 1
        started = time.monotonic()
        client.chat_completion(MESSAGES, model="m", max_tokens=2)  # fits now
        took = time.monotonic() - started
        for _ in stream:
            pass
        thread.join()
    assert took < 1.0, f"a call that fits waited {took:.1f} s for a waiter blocked on its own thread's stream"


def test_a_call_without_max_tokens_is_not_refused_because_its_own_thread_holds_a_stream(
    server: FakeInferenceServer,
) -> None:
    """docs/hard-caps.md: a call without max_tokens "is sized against what is not *spent* yet" when it waits;
    but a call made while the same thread reads a stream cannot wait for that stream, so it is sized against
    the whole unspent cap, does not fit beside its own stream, and is refused: $0.915 of $1.00 left, nothing
    spent. With wait=0 the same call runs (it is sized against what is free)."""
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1.00, price_per_1k_tokens=PRICES) as b:
        stream = client.chat_completion(MESSAGES, model="m", max_tokens=20, stream=True)
        try:
            client.chat_completion(MESSAGES, model="m")  # no max_tokens: shekel sizes it
        finally:
            for _ in stream:
                pass
    assert b.calls == 2


def test_a_shared_call_without_max_tokens_is_not_refused_because_its_own_thread_holds_a_stream(
    server: FakeInferenceServer, store_url: str
) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1.00, name="flex", store=store_url, price_per_1k_tokens=PRICES) as b:
        stream = client.chat_completion(MESSAGES, model="m", max_tokens=20, stream=True)
        try:
            client.chat_completion(MESSAGES, model="m")
        finally:
            for _ in stream:
                pass
    assert b.calls == 2


def test_a_huge_wait_is_refused_at_budget_time_or_works() -> None:
    """wait=1e10 ("practically forever") is accepted by budget(), then the first call that waits raises
    OverflowError ("timestamp out of range for platform time_t") from threading.Event.wait in the caller."""
    server = FakeInferenceServer(latency=0.5).start()
    try:
        client = InferenceClient(base_url=server.url)
        try:
            b = budget(max_usd=0.2, price_per_1k_tokens=PRICES, wait=1e10)
        except BudgetConfigError:
            return  # refused at budget() time: fine
        errors: list[BaseException] = []

        def one() -> None:
            try:
                client.chat_completion(MESSAGES, model="m", max_tokens=60)
            except BaseException as error:
                errors.append(error)

        with b:
            threads = [threading.Thread(target=shekel.carry(one)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not [e for e in errors if not isinstance(e, BudgetExceededError)], errors
    finally:
        server.stop()


def test_a_refusal_after_a_wait_says_it_waited(server: FakeInferenceServer) -> None:
    """docs/hard-caps.md: "A refusal after a wait says so ... BudgetExceededError.waited gives the seconds."
    A call that waits for a call in flight, and then no longer fits once it settled, is refused with
    waited=None and no mention of the wait."""
    server.latency = 1.0
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.2, price_per_1k_tokens=PRICES, wait=30):
        thread = threading.Thread(
            target=shekel.carry(lambda: client.chat_completion(MESSAGES, model="m", max_tokens=60))
        )
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(BudgetExceededError) as refused:
            client.chat_completion(MESSAGES, model="m", max_tokens=60)
        took = time.monotonic() - started
        thread.join()
    assert took > 0.5  # it did wait for the call in flight
    assert refused.value.waited is not None and "waited" in str(refused.value)


def test_a_call_that_can_never_fit_is_refused_at_once_even_behind_a_waiter(
    server: FakeInferenceServer,
) -> None:
    """docs/hard-caps.md: "It is refused only when it could not fit even if every call in flight cost
    nothing". A $2 call on a $0.20 cap waits behind an earlier waiter until that one leaves."""
    server.latency = 2.0
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.2, price_per_1k_tokens=PRICES):

        def call() -> None:
            with contextlib.suppress(BudgetExceededError):
                client.chat_completion(MESSAGES, model="m", max_tokens=60)

        threads = [threading.Thread(target=shekel.carry(call)) for _ in range(2)]
        threads[0].start()
        time.sleep(0.2)
        threads[1].start()  # waits for the first
        time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(BudgetExceededError):
            client.chat_completion(MESSAGES, model="m", max_tokens=1000)  # $2: never fits
        took = time.monotonic() - started
        for t in threads:
            t.join()
    assert took < 0.3, f"a call that can never fit waited {took:.2f} s before its refusal"
