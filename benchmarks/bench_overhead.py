"""1. Per-call overhead: the real ``InferenceClient.chat_completion`` inside a budget vs. unpatched.

In-process (canned answers through an ``httpx.MockTransport``) and over loopback HTTP to
``shekel.testing.FakeInferenceServer``. A last row gives shekel's own work per call in microseconds: the
adapter's wrapper (as installed on ``InferenceClient``) around a stub that returns a parsed answer. The request is the same in every variant (``max_tokens`` given, so
shekel adds nothing to it); the budget is entered once per batch and is far from its limit.
"""

from __future__ import annotations

from collections.abc import Callable

from huggingface_hub import ChatCompletionOutput

import shekel
from shekel.adapters import huggingface_hub as hf_adapter

from . import _transport
from ._harness import Row, count_calls, median, paired_ratio, time_batches, us

TARGET_TIME = 1.05
TARGET_CALLS = 1.03


def _variants(client: object) -> dict[str, Callable[[int], object]]:
    messages = _transport.MESSAGES

    def unpatched(n: int) -> None:
        shekel.uninstall()
        for _ in range(n):
            client.chat_completion(messages, max_tokens=100)  # type: ignore[attr-defined]

    def patched_no_budget(n: int) -> None:
        shekel.install()
        for _ in range(n):
            client.chat_completion(messages, max_tokens=100)  # type: ignore[attr-defined]

    def in_budget(n: int) -> None:
        with shekel.budget(max_usd=1_000_000, price_per_1k_tokens=_transport.PRICES) as b:
            for _ in range(n):
                client.chat_completion(messages, max_tokens=100)  # type: ignore[attr-defined]
        assert b.calls == n and b.spent > 0, "the benchmark must really count the calls"

    return {"unpatched": unpatched, "patched, no budget": patched_no_budget, "inside a budget": in_budget}


def _rows(where: str, variants: dict[str, Callable[[int], object]], number: int, repeats: int) -> list[Row]:
    times = time_batches(variants, number=number, repeats=repeats)
    calls = {name: count_calls(fn, 20) for name, fn in variants.items()}
    shekel.uninstall()
    base_t = median(times["unpatched"])
    rows = []
    for name in ("inside a budget", "patched, no budget"):
        ratio = paired_ratio(times, name, "unpatched")
        wall = paired_ratio(times.wall, name, "unpatched")
        calls_ratio = calls[name] / calls["unpatched"]
        targeted = where == "in-process" and name == "inside a budget"
        rows.append(
            Row(
                group="1. per call",
                name=f"chat_completion {name}, {where}",
                baseline="unpatched client",
                time_text=f"{us(median(times[name]))} vs {us(base_t)}",
                time_ratio=ratio,
                wall_ratio=wall,
                calls_text=f"{calls[name]:,.0f} vs {calls['unpatched']:,.0f}",
                calls_ratio=calls_ratio,
                target=f"≤ {TARGET_TIME} / ≤ {TARGET_CALLS}" if targeted else "",
                ok=(ratio.median <= TARGET_TIME and calls_ratio <= TARGET_CALLS) if targeted else None,
            )
        )
    return rows


def _own_work(number: int, repeats: int) -> Row:
    """shekel's own work per counted call, in absolute terms: its wrapper around a stub ``original``."""
    response = ChatCompletionOutput.parse_obj_as_instance(_transport.chat_body())

    def original(self: object, *args: object, **kwargs: object) -> ChatCompletionOutput:
        return response

    counted = hf_adapter._wrap_sync(original, hf_adapter._plan_chat)
    client = _transport.client()
    messages = _transport.MESSAGES

    def stub(n: int) -> None:
        for _ in range(n):
            original(client, messages, max_tokens=100)

    def wrapped(n: int) -> None:
        with shekel.budget(max_usd=1_000_000, price_per_1k_tokens=_transport.PRICES) as b:
            for _ in range(n):
                counted(client, messages, max_tokens=100)
        assert b.calls == n

    shekel.install()
    times = time_batches({"stub": stub, "wrapped": wrapped}, number=number, repeats=repeats)
    calls = {"stub": count_calls(stub, 50), "wrapped": count_calls(wrapped, 50)}
    extra_s = [w - s for w, s in zip(times["wrapped"], times["stub"], strict=True)]
    return Row(
        group="1. per call",
        name="shekel's own work per counted call",
        baseline="the stubbed call",
        time_text=f"{us(median(extra_s))} [{us(min(extra_s))}-{us(max(extra_s))}] per call",
        calls_text=f"+{calls['wrapped'] - calls['stub']:,.0f} calls",
        extra={"us": median(extra_s) * 1e6, "calls": calls["wrapped"] - calls["stub"]},
    )


def _openai_variants(client: object) -> dict[str, Callable[[int], object]]:
    """The same three variants through the real ``openai`` SDK's ``chat.completions.create``."""
    create = client.chat.completions.create  # type: ignore[attr-defined]
    messages = _transport.MESSAGES

    def unpatched(n: int) -> None:
        shekel.uninstall()
        for _ in range(n):
            create(model=_transport.MODEL, messages=messages, max_tokens=100)

    def patched_no_budget(n: int) -> None:
        shekel.install()
        for _ in range(n):
            create(model=_transport.MODEL, messages=messages, max_tokens=100)

    def in_budget(n: int) -> None:
        with shekel.budget(max_usd=1_000_000, price_per_1k_tokens=_transport.PRICES) as b:
            for _ in range(n):
                create(model=_transport.MODEL, messages=messages, max_tokens=100)
        assert b.calls == n and b.spent > 0, "the benchmark must really count the calls"

    return {"unpatched": unpatched, "patched, no budget": patched_no_budget, "inside a budget": in_budget}


def _openai_rows(quick: bool) -> list[Row]:
    """The OpenAI adapter: the real SDK over canned answers (an ``httpx.MockTransport``), vs. unpatched."""
    try:
        import httpx
        import openai
    except ImportError:  # the openai extra is not installed: nothing to measure
        return []
    http = httpx.Client(transport=httpx.MockTransport(_transport._handler()))
    client = openai.OpenAI(base_url=_transport.BASE_URL, api_key="benchmark", http_client=http, max_retries=0)
    try:
        return _rows(
            "openai adapter, in-process", _openai_variants(client), 50 if quick else 100, 5 if quick else 25
        )
    finally:
        client.close()


def run(quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    rows += _openai_rows(quick)
    with _transport.in_process():
        client = _transport.client()
        rows += _rows("in-process", _variants(client), 50 if quick else 100, 5 if quick else 25)
        rows.append(_own_work(500 if quick else 2000, 5 if quick else 11))
    with _transport.loopback() as url:
        client = _transport.client(url)
        rows += _rows("loopback HTTP", _variants(client), 20 if quick else 50, 3 if quick else 11)
    return rows
