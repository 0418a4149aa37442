"""3. Entering and leaving a budget, flat and nested 5 deep, vs. an empty context manager.

Rows with "budget(...)" include building the budget (validating the limit and the prices), since that is
what ``with budget(max_usd=..., price_per_1k_tokens=...)`` costs in user code; "re-entering" reuses one.
No model call is made: this is the fixed cost a budget adds around any block.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import shekel

from ._harness import Row, count_calls, median, paired_ratio, time_batches, us

TARGET_CALLS = 150
TARGET_US = 20.0
PRICES = {"input": 0.0002, "output": 0.0006}


def _variants() -> dict[str, Callable[[int], object]]:
    budget = shekel.budget
    reused = budget(max_usd=1.0, price_per_1k_tokens=PRICES)

    def empty(n: int) -> None:
        for _ in range(n):
            with nullcontext():
                pass

    def flat(n: int) -> None:
        for _ in range(n):
            with budget(max_usd=1.0, price_per_1k_tokens=PRICES):
                pass

    def reenter(n: int) -> None:
        for _ in range(n):
            with reused:
                pass

    def empty5(n: int) -> None:
        for _ in range(n):
            with nullcontext(), nullcontext(), nullcontext(), nullcontext(), nullcontext():
                pass

    def nested5(n: int) -> None:
        for _ in range(n):
            with (
                budget(max_usd=1.0, price_per_1k_tokens=PRICES, name="a"),
                budget(max_usd=0.5, name="b"),
                budget(max_usd=0.25, name="c"),
                budget(max_usd=0.125, name="d"),
                budget(max_usd=0.0625, name="e"),
            ):
                pass

    return {
        "empty": empty,
        "flat": flat,
        "reenter": reenter,
        "empty5": empty5,
        "nested5": nested5,
    }


def run(quick: bool = False) -> list[Row]:
    shekel.install()  # the first budget of a process installs the patch; measure the steady state
    variants = _variants()
    times = time_batches(variants, number=1000 if quick else 3000, repeats=5 if quick else 11)
    calls = {name: count_calls(fn, 50) for name, fn in variants.items()}
    specs = [
        ("flat", "empty", "with budget(max_usd, prices): pass", "with nullcontext()", True),
        ("reenter", "empty", "with b: pass (b built once)", "with nullcontext()", False),
        ("nested5", "empty5", "5 nested with budget(...)", "5 nested nullcontext()", False),
    ]
    rows = []
    for name, base, label, base_label, targeted in specs:
        t = median(times[name])
        ok = (calls[name] < TARGET_CALLS and t * 1e6 < TARGET_US) if targeted else None
        rows.append(
            Row(
                group="3. enter/leave",
                name=label,
                baseline=base_label,
                time_text=f"{us(t)} vs {us(median(times[base]))}",
                time_ratio=paired_ratio(times, name, base),
                wall_ratio=paired_ratio(times.wall, name, base),
                calls_text=f"{calls[name]:,.0f} vs {calls[base]:,.0f}",
                calls_ratio=calls[name] / calls[base],
                target=f"< {TARGET_CALLS} calls, < {TARGET_US:.0f} µs" if targeted else "",
                ok=ok,
                extra={"us": t * 1e6, "calls": calls[name]},
            )
        )
    return rows
