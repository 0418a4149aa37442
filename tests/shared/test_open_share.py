"""``on_store_error="open"`` without a window: this process is held to its own share of the budget only
while the store is down, from the first call that finds it down, and the store alone enforces the limits
again as soon as it answers.

A real redis-server that the tests stop and start again on the same port (with no persistence, it comes
back empty), the real ``InferenceClient`` and ``AsyncInferenceClient`` against the local server.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from shekel import BudgetExceededError, budget
from shekel.stores import RedisStore
from shekel.testing import FakeInferenceServer

from .._redis_server import free_port, start_server, stop_server
from .test_shared_budgets import CALL_COST, MESSAGES, PRICES

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient


class Restartable:
    """A redis-server on a fixed loopback port that a test stops and starts again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for _attempt in range(5):
            self.port = free_port()
            self.process = start_server(self.port, str(folder))
            if self.process is not None:
                break
        else:
            pytest.fail("redis-server could not start on a free port")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            self.process = None

    def start(self) -> None:
        self.process = start_server(self.port, str(self.folder))
        assert self.process is not None, f"port {self.port} was taken while redis-server was down"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Restartable]:
    server = Restartable(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_the_share_applies_from_the_first_call_the_store_is_down_and_lifts_when_it_is_back(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    client = InferenceClient(base_url=server.url)

    def call() -> None:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with budget(
            max_usd=0.10, name="svc", store=redis.url, on_store_error="open", price_per_1k_tokens=PRICES
        ) as b:
            for _ in range(3):
                call()
            RedisStore(redis.url).reset("svc")  # another process (an operator's `shekel reset`) clears it
            for _ in range(3):
                call()  # the store has room: the share ($0.09 by now) is no limit while the store answers
            assert b.spent_exact == CALL_COST * 3
            assert b._own_spent == CALL_COST * 6

            redis.stop()
            sent = server.request_count
            with pytest.raises(BudgetExceededError) as refused:
                call()  # the first call that finds the store down is held to the share, already spent
            assert server.request_count == sent
            assert "which is down: this process's own share" in str(refused.value)

            redis.start()  # back, and empty (no persistence): the store enforces the cap again
            call()
            assert server.request_count == sent + 1
            assert b.spent_exact == CALL_COST
    assert len([w for w in caught if "cannot be used" in str(w.message)]) == 1


def test_a_call_without_max_tokens_is_sized_to_the_share_once_the_store_is_down(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    """While the store answered, it sized such a call; with the store down, the share does: the request
    carries a max_tokens that keeps the share within the cap."""
    client = InferenceClient(base_url=server.url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with budget(
            max_usd=0.10, name="svc", store=redis.url, on_store_error="open", price_per_1k_tokens=PRICES
        ) as b:
            for _ in range(2):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)  # $0.03 of $0.10
            redis.stop()
            client.chat_completion(MESSAGES, model="m")
            sent = server.requests[-1].body.get("max_tokens")
            assert isinstance(sent, int) and 0 < sent * Decimal("0.002") <= Decimal("0.07")  # the room left
            assert b._own_spent <= Decimal("0.10")


def test_async_calls_are_held_to_the_share_from_the_first_call_the_store_is_down(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    async def main() -> None:
        client = AsyncInferenceClient(base_url=server.url)

        async def call() -> None:
            await client.chat_completion(MESSAGES, model="m", max_tokens=5)

        with budget(
            max_usd=0.10, name="svc", store=redis.url, on_store_error="open", price_per_1k_tokens=PRICES
        ) as b:
            for _ in range(3):
                await call()
            RedisStore(redis.url).reset("svc")
            for _ in range(3):
                await call()
            redis.stop()
            sent = server.request_count
            with pytest.raises(BudgetExceededError):
                await call()
            assert server.request_count == sent
            redis.start()
            await call()
            assert server.request_count == sent + 1
            assert b.spent_exact == CALL_COST

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asyncio.run(main())


@pytest.mark.parametrize("wait", [None, 0])
def test_with_the_store_down_a_call_waits_for_room_another_thread_holds_in_the_share(
    server: FakeInferenceServer, redis: Restartable, wait: float | None
) -> None:
    """Two threads, the store down, room in the share for one worst case: the second call waits for the
    first to settle (it costs less than it held), then goes ahead, as it would against the store; with
    ``wait=0`` it is refused at once."""
    import contextvars
    import threading

    server.chunk_delay = 0.1
    client = InferenceClient(base_url=server.url)
    redis.stop()
    streaming = threading.Event()
    outcomes: list[str] = []

    def stream() -> None:
        for n, _chunk in enumerate(client.chat_completion(MESSAGES, model="m", max_tokens=5, stream=True)):
            if n == 0:
                streaming.set()
        outcomes.append("streamed")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with budget(
            max_usd=0.10,
            name="svc",
            store=redis.url,
            on_store_error="open",
            price_per_1k_tokens=PRICES,
            **({} if wait is None else {"wait": wait}),
        ) as b:
            first = threading.Thread(target=contextvars.copy_context().run, args=(stream,))  # in the budget
            first.start()
            assert streaming.wait(10)
            try:
                client.chat_completion(
                    MESSAGES, model="m", max_tokens=5
                )  # holds $0.058: fits after the stream
                outcomes.append("called")
            except BudgetExceededError:
                outcomes.append("refused")
            first.join(10)
    assert sorted(outcomes) == (["called", "streamed"] if wait is None else ["refused", "streamed"])
    assert server.request_count == (2 if wait is None else 1)
    assert b._own_spent <= Decimal("0.10")


def test_the_share_holds_nothing_once_every_call_ended_and_follows_the_store(
    server: FakeInferenceServer, store_url: str
) -> None:
    """Calls that end every way (answered, an error answer, a stream closed early, async, refused) leave
    nothing held in the process's share, and its spend is never more than the store's."""
    import huggingface_hub

    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.10, name="svc", store=store_url, price_per_1k_tokens=PRICES) as b:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
        server.fail_next(500)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
        stream = client.chat_completion(MESSAGES, model="m", max_tokens=5, stream=True)
        next(iter(stream))
        stream.close()

        async def many() -> list[object]:
            aclient = AsyncInferenceClient(base_url=server.url)
            calls = (aclient.chat_completion(MESSAGES, model="m", max_tokens=5) for _ in range(4))
            return await asyncio.gather(*calls, return_exceptions=True)

        ended = asyncio.run(many())
        assert any(isinstance(e, BudgetExceededError) for e in ended), ended  # some refused, some answered
        assert not all(isinstance(e, BudgetExceededError) for e in ended), ended
        share = b._shared.seen
        assert (share.held_money, share.held_tokens, share.held_calls) == (0, 0, 0)
        known = share.spent  # the store's figures at its last answer, plus this process's settles since
        assert 0 < known <= int(b.spent_exact * 10**9)
