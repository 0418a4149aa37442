"""Review round 15a: a call's settle on the process's share is two steps (its hold ends, then its charge),
and a call of another thread can be checked between them, with the store down."""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import Any

import pytest

from shekel import BudgetExceededError, budget
from shekel import _sharing as sharing  # read only: where the pause below goes
from shekel.testing import FakeInferenceServer

from ._helpers import MESSAGES, PRICES, Restartable

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient


def _pause_after_the_hold_ends(paused: threading.Event, resume: threading.Event) -> Any:
    """A trace function for one thread: once its call's hold in the share has ended (`_unhold_shares`
    returns inside `_sharing.settle`), the thread stops there until ``resume`` is set. It stands for a
    switch of threads at that point (CPython switches threads every 5 ms, at any bytecode); nothing of
    shekel runs differently."""

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if (
            event == "call"
            and frame.f_code is sharing._unhold_shares.__code__
            and frame.f_back is not None
            and frame.f_back.f_code is sharing.settle.__code__
        ):

            def on_return(frame: FrameType, event: str, arg: object) -> Any:
                if event == "return":
                    sys.settrace(None)
                    paused.set()
                    resume.wait(30)
                return on_return

            return on_return
        return None

    return tracer


def test_with_the_store_down_a_call_settling_never_frees_room_it_has_not_been_charged_for(
    server: FakeInferenceServer, redis: Restartable
) -> None:
    """docs/shared-budgets.md, "When the store is down": "each process holds itself to the budget's limits
    against its share ... the call is checked against it"; docs/budgets.md: `max_llm_calls` counts calls
    made and in flight. In the store, and in a budget of one process, a settle is one atomic step (the hold
    becomes the charge), so a call is always counted, in flight or made.

    `max_llm_calls=2`, on_store_error="open", the store down. One call is made; thread 1 makes the second
    (2 of 2: in flight). As it settles, thread 2 makes a call with `wait=0`. Expected: refused (2 calls
    made or in flight of 2), whenever thread 2 runs. Observed, when thread 2 runs just after thread 1's
    hold in the share has ended and before its charge: it is sent; 3 calls of `max_llm_calls=2`. Money and
    tokens have the same gap (the hold is gone, the cost not yet added).

    Cause: `_sharing.settle` calls `_unhold_shares(reservation)` (held_calls/held_money/held_tokens down,
    under `shares.LOCK`), releases the lock, then takes it again for `share.charge(...)` (calls/spent up).
    `_share_answers` in another thread takes the lock in between and checks against a share that counts
    the call nowhere."""
    client = InferenceClient(base_url=server.url)

    def svc(**extra: Any) -> Any:
        return budget(
            max_llm_calls=2,
            name="svc",
            store=redis.url,
            on_store_error="open",
            price_per_1k_tokens=PRICES,
            **extra,
        )

    redis.stop()
    with svc():
        client.chat_completion(MESSAGES, model="m", max_tokens=5)  # 1 of 2
    paused, resume = threading.Event(), threading.Event()

    def first() -> None:
        sys.settrace(_pause_after_the_hold_ends(paused, resume))
        try:
            with svc():
                client.chat_completion(MESSAGES, model="m", max_tokens=5)  # 2 of 2
        finally:
            sys.settrace(None)
            paused.set()

    outcome: list[str] = []

    def second() -> None:
        try:
            with svc(wait=0):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
            outcome.append("sent")
        except BudgetExceededError:
            outcome.append("refused")

    thread_1 = threading.Thread(target=first)
    thread_1.start()
    assert paused.wait(30)  # thread 1's call is answered, and settling
    thread_2 = threading.Thread(target=second)
    thread_2.start()
    thread_2.join(30)
    resume.set()
    thread_1.join(30)
    assert (outcome, server.request_count) == (["refused"], 2), (
        f"the third call was {outcome}: {server.request_count} calls sent with max_llm_calls=2"
    )
