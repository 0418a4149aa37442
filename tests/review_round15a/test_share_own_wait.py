"""Review round 15a: with the store down, a call waits for room that its own thread holds in the share."""

from __future__ import annotations

import time

import pytest

from shekel import Budget, BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

from ._helpers import MESSAGES, PRICES, Restartable

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient


def _refusal_after_own_stream(server: FakeInferenceServer, redis: Restartable, down: bool) -> float:
    """Per-request budgets of one name: request 1 opens a stream and leaves it unread; request 2, in the
    same thread, makes a call that fits only once the stream settles. Seconds until request 2 is refused."""
    client = InferenceClient(base_url=server.url)

    def request_budget() -> Budget:
        return budget(
            max_usd=0.10,
            name="svc",
            store=redis.url,
            on_store_error="open",
            price_per_1k_tokens=PRICES,
            wait=5,
        )

    if down:
        redis.stop()
    with request_budget():
        stream = client.chat_completion(MESSAGES, model="m", max_tokens=5, stream=True)  # holds $0.058
        next(iter(stream))
    started = time.monotonic()
    with pytest.raises(BudgetExceededError), request_budget():
        client.chat_completion(MESSAGES, model="m", max_tokens=5)  # needs $0.058 of the $0.042 left
    took = time.monotonic() - started
    for _ in stream:
        pass
    return took


def test_control_with_the_store_up_a_call_never_waits_for_its_own_stream(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    assert _refusal_after_own_stream(server, redis, down=False) < 1.0


def test_with_the_store_down_a_call_never_waits_for_room_its_own_thread_holds(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    """docs/hard-caps.md, "Waiting for room that calls in flight hold": "**No deadlock.** A call never waits
    for room that its own thread (or, in `asyncio`, its own task) holds: a stream it is still reading, say.
    It is then refused at once, as before." docs/shared-budgets.md: the share is one per name and store
    "whichever budget objects open it (a budget opened per request, or by `@budget(...)`, too)".

    A service opens `budget(max_usd=0.10, name="svc", store=..., on_store_error="open", wait=5)` per
    request. Request 1 starts a stream ($0.058 held) and the thread goes on to request 2 before reading
    it; request 2's call ($0.058) does not fit beside it. With the store up it is refused at once (the
    control test: the store tells the caller's own holds by owner, across budget objects). With the store
    down it waits the whole 5 s (60 s with the default `wait`), for a stream only this blocked thread can
    read, and the refusal then says "It waited 5 s for calls in flight to settle".

    Cause: `_sharing._share_answers` marks the refusal waitable when `_own_holds_in(budget, ...)` is less
    than `share.held_calls`; `_own_holds_in` scans `budget._tree.holds` only, the tree of the budget object
    making the call, while the share (and its `held_calls`) is shared by every budget object of the name.
    Holds of this thread in another tree (another request's budget) count as "other calls"."""
    took = _refusal_after_own_stream(server, redis, down=True)
    assert took < 1.0, f"refused after {took:.1f} s of waiting for the thread's own stream"
