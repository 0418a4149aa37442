"""Run every benchmark and print one table: ``python -m benchmarks`` (or ``python benchmarks/run.py``).

Options: ``--quick`` (fewer repeats, a smoke run), ``--only NAME`` (overhead, stream, enter, concurrency,
memory, tokenizer, reachable, stores, otel; repeatable), ``--json PATH`` (also write the rows as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # the benchmark never needs (or sends) a real token
    os.environ.pop(_name, None)

import huggingface_hub  # noqa: E402

import shekel  # noqa: E402

from . import (  # noqa: E402
    bench_concurrency,
    bench_enter,
    bench_memory,
    bench_otel,
    bench_overhead,
    bench_reachable,
    bench_stores,
    bench_stream,
    bench_tokenizer,
)
from ._harness import Row  # noqa: E402

BENCHMARKS = {
    "overhead": bench_overhead,
    "stream": bench_stream,
    "enter": bench_enter,
    "concurrency": bench_concurrency,
    "memory": bench_memory,
    "tokenizer": bench_tokenizer,
    "reachable": bench_reachable,
    "stores": bench_stores,
    "otel": bench_otel,
}


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _verdict(row: Row) -> str:
    return "" if row.ok is None else ("yes" if row.ok else "NO")


def render(rows: list[Row]) -> str:
    header = [
        "benchmark",
        "vs",
        "figures (shekel vs baseline; times are CPU per op)",
        "CPU time ratio median [min-max], best-of",
        "wall ratio median",
        "function calls",
        "calls ratio",
        "target",
        "met",
    ]
    table = [header]
    for r in rows:
        table.append(
            [
                f"{r.group}: {r.name}",
                r.baseline,
                r.time_text,
                r.time_ratio.ratio_text() if r.time_ratio else "",
                f"{r.wall_ratio.median:.3f}" if r.wall_ratio else "",
                r.calls_text,
                "" if r.calls_ratio is None else f"{r.calls_ratio:.3f}",
                r.target,
                _verdict(r),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = []
    for n, line in enumerate(table):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run, not for figures")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    print(
        f"shekel {shekel.__version__}, huggingface_hub {huggingface_hub.__version__}, Python "
        f"{platform.python_version()} on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        f"{' (quick run)' if args.quick else ''}; load average {_load()}",
        flush=True,
    )
    rows: list[Row] = []
    started = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        rows += BENCHMARKS[name].run(quick=args.quick)
        print(f"  {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    print(render(rows))
    print(f"total {time.perf_counter() - started:.0f} s; load average now {_load()}")
    if args.json:
        payload = [
            {
                "group": r.group,
                "name": r.name,
                "baseline": r.baseline,
                "time": r.time_text,
                "time_ratio": None if r.time_ratio is None else vars(r.time_ratio),
                "wall_ratio": None if r.wall_ratio is None else vars(r.wall_ratio),
                "calls": r.calls_text,
                "calls_ratio": r.calls_ratio,
                "target": r.target,
                "ok": r.ok,
                "extra": r.extra,
            }
            for r in rows
        ]
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    missed = [r for r in rows if r.ok is False]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
