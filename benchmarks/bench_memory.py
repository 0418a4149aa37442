"""5. Memory: bytes a budget retains per recorded call, and after 100,000 calls in one long-lived budget.

Measured with ``tracemalloc`` (current traced memory after a full ``gc.collect()``, relative to a warm
start). A budget keeps exact aggregates (totals and per-model ``ModelTotals``) for every call, and a bounded
``deque(maxlen=MAX_RECORDS)`` of per-call ``CallRecord``s, so what it retains stops growing once
``MAX_RECORDS`` calls have been made.

* Per recorded call: the real ``InferenceClient.chat_completion`` in-process, N < ``MAX_RECORDS`` calls in
  a budget, minus what the same calls retain unpatched (huggingface_hub's own caches).
* 100,000 calls: the adapter's own wrapper (``_wrap_sync(original, _plan_chat)``, the code installed on
  ``InferenceClient``) around a stub ``original`` that returns a parsed ``ChatCompletionOutput``, so the same
  plan / reserve / settle / record path runs 100,000 times in seconds instead of the HTTP client's minutes.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Callable

from huggingface_hub import ChatCompletionOutput

import shekel
from shekel import _budget
from shekel.adapters import huggingface_hub as hf_adapter

from . import _transport
from ._harness import Row

LONG_RUN = 100_000


def _retained(setup: Callable[[], object], work: Callable[[object, int], None], n: int) -> int:
    """Bytes still allocated after ``work(state, n)`` (gc'd), relative to just after ``setup()``."""
    gc.collect()
    tracemalloc.start()
    try:
        state = setup()
        work(state, 5)  # warm: first-call caches, the model's aggregate row
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        work(state, n)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del state
    return after - before


def _per_call(n: int) -> tuple[float, float]:
    with _transport.in_process():
        client = _transport.client()

        def calls(_state: object, k: int) -> None:
            for _ in range(k):
                client.chat_completion(_transport.MESSAGES, max_tokens=100)

        def unpatched() -> object:
            shekel.uninstall()
            return None

        def in_budget() -> object:
            b = shekel.budget(max_usd=1_000_000, price_per_1k_tokens=_transport.PRICES)
            b.__enter__()
            return b

        base = _retained(unpatched, calls, n)
        budget_state: list[shekel.Budget] = []

        def in_budget_kept() -> object:
            b = in_budget()
            budget_state.append(b)  # type: ignore[arg-type]
            return b

        try:
            with_budget = _retained(in_budget_kept, calls, n)
        finally:
            for b in budget_state:
                b.__exit__(None, None, None)
        shekel.uninstall()
    return with_budget / n, base / n


def _long_run(checkpoints: list[int]) -> list[tuple[int, int]]:
    response = ChatCompletionOutput.parse_obj_as_instance(_transport.chat_body())

    def original(self: object, *args: object, **kwargs: object) -> ChatCompletionOutput:
        return response

    counted = hf_adapter._wrap_sync(original, hf_adapter._plan_chat)
    shekel.install()
    gc.collect()
    tracemalloc.start()
    results = []
    try:
        with shekel.budget(max_usd=1_000_000, price_per_1k_tokens=_transport.PRICES) as b:
            counted(None, _transport.MESSAGES, model=_transport.MODEL, max_tokens=100)
            gc.collect()
            start = tracemalloc.get_traced_memory()[0]
            done = 1
            for point in checkpoints:
                for _ in range(point - done):
                    counted(None, _transport.MESSAGES, model=_transport.MODEL, max_tokens=100)
                done = point
                gc.collect()
                results.append((point, tracemalloc.get_traced_memory()[0] - start))
            assert b.calls == checkpoints[-1] and len(b.records) == _budget.MAX_RECORDS
    finally:
        tracemalloc.stop()
    shekel.uninstall()
    return results


def run(quick: bool = False) -> list[Row]:
    n = 300 if quick else 800
    assert n < _budget.MAX_RECORDS
    per_call, base = _per_call(n)
    checkpoints = [1_000, 10_000] if quick else [1_000, 10_000, 50_000, LONG_RUN]
    long = _long_run(checkpoints)
    record_bytes = per_call - base
    bound = _budget.MAX_RECORDS * record_bytes
    last_n, last_bytes = long[-1]
    rows = [
        Row(
            group="5. memory",
            name="retained per recorded call",
            baseline="unpatched client",
            time_text=f"{per_call:,.0f} B vs {base:,.0f} B per call",
            calls_text=f"{record_bytes:,.0f} B per record",
            extra={"per_call": per_call, "baseline": base},
        ),
        Row(
            group="5. memory",
            name=f"one budget, {last_n:,} calls",
            baseline=f"{_budget.MAX_RECORDS:,} records x {record_bytes:,.0f} B",
            time_text=", ".join(f"{k:,}: {v / 1024:,.0f} KiB" for k, v in long),
            target=f"bounded (≤ {bound * 1.25 / 1024:,.0f} KiB)",
            ok=last_bytes <= bound * 1.25,
            extra={"checkpoints": json.dumps(long)},
        ),
    ]
    return rows
