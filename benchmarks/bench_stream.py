"""2. Streaming: a 200-chunk ``chat_completion(stream=True)`` consumed to the end, wrapped vs. raw.

In-process (canned SSE through an ``httpx.MockTransport``). Main row: the caller asks for usage itself
(``stream_options={"include_usage": True}``), so both variants receive the same bytes and the difference is
the wrapper's per-chunk work, including reading the usage. Second row: the caller does not ask; shekel adds
the option, the server sends one more (usage-only) chunk, and shekel strips it before the caller sees it.
"""

from __future__ import annotations

from collections.abc import Callable

import shekel

from . import _transport
from ._harness import Row, count_calls, median, paired_ratio, time_batches, us

TARGET_TIME = 1.05
TARGET_CALLS = 1.02
CHUNKS = _transport.STREAM_CHUNKS


def _variants(client: object, *, ask_usage: bool) -> dict[str, Callable[[int], object]]:
    messages = _transport.MESSAGES
    extra = {"stream_options": {"include_usage": True}} if ask_usage else {}

    def consume() -> int:
        seen = 0
        for _chunk in client.chat_completion(messages, max_tokens=CHUNKS, stream=True, **extra):  # type: ignore[attr-defined]
            seen += 1
        return seen

    def raw(n: int) -> None:
        shekel.uninstall()
        for _ in range(n):
            consume()

    def wrapped(n: int) -> None:
        with shekel.budget(max_usd=1_000_000, price_per_1k_tokens=_transport.PRICES) as b:
            for _ in range(n):
                seen = consume()
        expected = CHUNKS + 1 if ask_usage else CHUNKS  # the caller sees the usage chunk only if it asked
        assert seen == expected, (seen, expected)
        assert b.calls == n and b.output_tokens == n * CHUNKS and b.estimated_calls == 0, "usage not counted"

    return {"raw stream": raw, "wrapped stream": wrapped}


def run(quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    with _transport.in_process():
        client = _transport.client()
        for ask_usage in (True, False):
            variants = _variants(client, ask_usage=ask_usage)
            times = time_batches(variants, number=10 if quick else 20, repeats=5 if quick else 11)
            calls = {name: count_calls(fn, 4) for name, fn in variants.items()}
            shekel.uninstall()
            ratio = paired_ratio(times, "wrapped stream", "raw stream")
            wall = paired_ratio(times.wall, "wrapped stream", "raw stream")
            calls_ratio = calls["wrapped stream"] / calls["raw stream"]
            per_chunk_s = (median(times["wrapped stream"]) - median(times["raw stream"])) / CHUNKS
            per_chunk_calls = (calls["wrapped stream"] - calls["raw stream"]) / CHUNKS
            name = (
                "200-chunk stream, caller asks usage" if ask_usage else "200-chunk stream, shekel asks usage"
            )
            rows.append(
                Row(
                    group="2. streaming",
                    name=name,
                    baseline="raw stream",
                    time_text=f"{us(median(times['wrapped stream']))} vs {us(median(times['raw stream']))}"
                    f" ({per_chunk_s * 1e6:+.2f} µs/chunk)",
                    time_ratio=ratio,
                    wall_ratio=wall,
                    calls_text=f"{calls['wrapped stream']:,.0f} vs {calls['raw stream']:,.0f}"
                    f" ({per_chunk_calls:+.2f}/chunk)",
                    calls_ratio=calls_ratio,
                    target=f"≤ {TARGET_TIME} / ≤ {TARGET_CALLS}" if ask_usage else "",
                    ok=(ratio.median <= TARGET_TIME and calls_ratio <= TARGET_CALLS) if ask_usage else None,
                )
            )
    return rows
