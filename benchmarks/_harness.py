"""Measuring helpers shared by every benchmark: interleaved timing, function-call counts, result rows."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Spread:
    """Median and extremes of several repeats."""

    median: float
    low: float
    high: float
    #: For time ratios: fastest repeat over fastest repeat, the figure least disturbed by other load.
    best: float | None = None

    @classmethod
    def of(cls, values: list[float], best: float | None = None) -> Spread:
        return cls(statistics.median(values), min(values), max(values), best)

    def ratio_text(self) -> str:
        best = "" if self.best is None else f", best {self.best:.3f}"
        return f"{self.median:.3f} [{self.low:.3f}-{self.high:.3f}]{best}"


@dataclass
class Row:
    """One line of the results table. ``ok`` is None when the row has no target."""

    group: str
    name: str
    baseline: str
    time_text: str = ""
    time_ratio: Spread | None = None
    wall_ratio: Spread | None = None
    calls_text: str = ""
    calls_ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Times(dict[str, list[float]]):
    """Seconds per operation of each variant and repeat, in CPU time of this process; ``wall`` in wall-clock.

    CPU time is the main figure: on a shared machine, other processes stretch wall-clock time by whatever
    they happen to run, while the CPU this process spends is what shekel adds.
    """

    def __init__(self, names: list[str]) -> None:
        super().__init__({name: [] for name in names})
        self.wall: dict[str, list[float]] = {name: [] for name in names}


def time_batches(variants: dict[str, Callable[[int], object]], *, number: int, repeats: int) -> Times:
    """Seconds per operation of each variant, ``repeats`` times, interleaved so drift hits all alike.

    Each variant is called as ``fn(number)`` and must perform ``number`` operations. The order of the
    variants rotates every repeat; the garbage collector is off while a batch runs (as in ``timeit``).
    """
    for fn in variants.values():  # warm-up: imports, caches, connection pools, the patch itself
        fn(max(1, number // 10))
    names = list(variants)
    results = Times(names)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            gc.disable()
            try:
                cpu, wall = time.process_time(), time.perf_counter()
                variants[name](number)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            finally:
                gc.enable()
            results[name].append(cpu / number)
            results.wall[name].append(wall / number)
    return results


def paired_ratio(times: Mapping[str, list[float]], num: str, den: str) -> Spread:
    """Ratio ``num/den`` of the same repeat (measured back to back), summarised over repeats.

    ``best`` is the ratio of the two fastest repeats: on a shared machine, other load only ever adds time,
    so it is the closest to the undisturbed cost.
    """
    ratios = [a / b for a, b in zip(times[num], times[den], strict=True)]
    return Spread.of(ratios, best=min(times[num]) / min(times[den]))


def _count(fn: Callable[[int], object], number: int) -> int:
    count = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event == "call" or event == "c_call":
            count += 1

    sys.setprofile(hook)
    try:
        fn(number)
    finally:
        sys.setprofile(None)
    return count


def count_calls(fn: Callable[[int], object], number: int) -> float:
    """Python ('call') plus C ('c_call') function calls per operation of ``fn``, in this thread.

    Deterministic: it does not depend on the machine's load. ``fn`` runs ``number`` and then ``2 * number``
    operations and the difference is divided by ``number``, so that work done once per batch (entering the
    budget, installing the patch, the profiler hook itself) is not counted as per-operation work.
    """
    fn(2)  # warm caches first so one-off work (imports, first connection) is not counted
    return (_count(fn, 2 * number) - _count(fn, number)) / number


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def median(values: list[float]) -> float:
    return statistics.median(values)
