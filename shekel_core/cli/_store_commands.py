"""``shekel status``, ``shekel report`` and ``shekel reset``: what a store holds, read through the Store API."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from ..errors import ShekelError, StoreError
from ..ledger.shared import SharedLimits, Store, from_nano, parse_window
from ..ledger.sqlite import SQLiteStore
from ..stores import open_store
from . import _args, _render
from ._codes import EXIT_OK

BY_KEYS = ("model", "provider", "budget", "day", "hour")


def _open(url: str) -> Store:
    """The store at ``url``, which must exist: these commands read (or reset) a store, they never make one."""
    try:
        store = open_store(url)
    except ShekelError as error:
        raise _args.UsageError(str(error)) from None
    if isinstance(store, SQLiteStore) and not store.path.is_file():
        raise StoreError(
            f"shared budget store {store.display} could not be read: no such file (is the path right? "
            f"shekel status/report/reset never create a store)"
        )
    return store


def _limits(store: Store, name: str) -> tuple[SharedLimits, dict[str, Any]] | None:
    described = store.describe(name)
    if described is None:
        return None
    limits = SharedLimits(
        name,
        parse_window(_window_arg(described["window"])),
        described["max_nano"],
        described["max_calls"],
        described["max_tokens"],
    )
    return limits, described


def _window_arg(spec: str | None) -> str | None:
    return None if spec in (None, "none") else spec


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------------ status
def status(args: argparse.Namespace) -> int:
    store = _open(args.store)
    names = args.names or store.names()
    rows: list[dict[str, Any]] = []
    for name in names:
        found = _limits(store, name)
        if found is None:
            raise _args.UsageError(
                f"no shared budget named {name!r} in {store.display} (shekel status --store URL lists them)"
            )
        limits, _ = found
        figures = store.read(limits)
        window = limits.window
        rows.append(
            {
                "name": name,
                "spent": str(from_nano(figures.spent)),
                "reserved": str(from_nano(figures.reserved)),
                "limit": None if limits.max_nano is None else str(from_nano(limits.max_nano)),
                "calls": figures.calls,
                "failed_calls": figures.failed,
                "calls_in_flight": figures.inflight,
                "max_calls": limits.max_calls,
                "input_tokens": figures.input_tokens,
                "output_tokens": figures.output_tokens,
                "max_tokens": limits.max_tokens,
                "window": None if window.spec == "none" else window.spec,
                "resets_at": None if figures.resets_at is None else _iso(figures.resets_at),
                "_resets": _resets(window, figures.resets_at),
            }
        )
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        _render.line(f"no shared budgets in {store.display}", stream=sys.stdout)
        return EXIT_OK
    _render.table(
        ["budget", "spent", "reserved", "limit", "calls", "window", "resets"],
        [
            [
                r["name"],
                _render.usd(Decimal(r["spent"])),
                _render.usd(Decimal(r["reserved"])),
                _render.usd(None if r["limit"] is None else Decimal(r["limit"])),
                # as max_llm_calls counts them: answered, failed and in flight
                f"{r['calls'] + r['failed_calls'] + r['calls_in_flight']}"
                + ("" if r["max_calls"] is None else f" of {r['max_calls']}"),
                r["window"] or "none",
                r["_resets"],
            ]
            for r in rows
        ],
        title=f"shared budgets in {store.display}",
    )
    return EXIT_OK


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _resets(window: Any, resets_at: float | None) -> str:
    if resets_at is not None:
        return _when(resets_at)
    if window.seconds is not None:
        return f"rolling ({window.spec})"
    return "on reset"


# ------------------------------------------------------------------------------------------ report
def _key(entry: dict[str, Any], by: str) -> str:
    if by == "day":
        return datetime.fromtimestamp(entry["at"], timezone.utc).strftime("%Y-%m-%d")
    if by == "hour":
        return datetime.fromtimestamp(entry["at"], timezone.utc).strftime("%Y-%m-%d %H:00")
    if by == "budget":
        return str(entry.get("name") or entry.get("budget") or "-")
    return str(entry.get(by) or "(unknown)")


def aggregate(entries: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, int]] = defaultdict(
        lambda: {
            "calls": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_nano": 0,
            "failed": 0,
            "expired": 0,
            "estimated": 0,
        }
    )
    for e in entries:
        row = groups[_key(e, by)]
        row["calls"] += 1
        row["input_tokens"] += int(e["input_tokens"])
        row["output_tokens"] += int(e["output_tokens"])
        row["cost_nano"] += int(e["cost_nano"])
        # expired: a hold whose process died mid-call, charged at what it held (estimated tokens)
        row["expired"] += bool(e.get("expired"))
        row["failed"] += not e.get("expired") and e.get("outcome") not in (None, "ok")
        row["estimated"] += bool(e.get("estimated"))
    ordered = (
        sorted(groups.items())
        if by in ("day", "hour")
        else sorted(groups.items(), key=lambda kv: -kv[1]["cost_nano"])
    )
    return [
        {
            by: key,
            "calls": row["calls"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "spent": str(from_nano(row["cost_nano"])),
            "failed": row["failed"],
            "expired": row["expired"],
            "estimated": row["estimated"],
        }
        for key, row in ordered
    ]


def report(args: argparse.Namespace) -> int:
    since = _args.since(args.since)
    if args.plot is not None and not args.plot.lower().endswith((".png", ".svg")):
        raise _args.UsageError(f"--plot writes a .png or a .svg file, got {args.plot!r}")
    for option, path in (("--csv", args.csv), ("--plot", args.plot)):
        if path is not None:
            _args.writable_file(option, path)
    store = _open(args.store)
    entries = store.log(args.name, since=since)
    if args.name is not None and not entries and store.describe(args.name) is None:
        raise _args.UsageError(f"no shared budget named {args.name!r} in {store.display}")
    rows = aggregate(entries, args.by)
    total = sum(int(e["cost_nano"]) for e in entries)
    if args.csv is not None:
        try:
            with open(args.csv, "w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(
                    [
                        args.by,
                        "calls",
                        "input_tokens",
                        "output_tokens",
                        "spent_usd",
                        "failed",
                        "expired",
                        "estimated",
                    ]
                )
                for r in rows:
                    writer.writerow(
                        [r[args.by], r["calls"], r["input_tokens"], r["output_tokens"], r["spent"]]
                        + [r[count] for count in ("failed", "expired", "estimated")]
                    )
        except OSError as error:
            raise _args.UsageError(
                f"--csv {args.csv}: cannot be written ({error.strerror or error})"
            ) from None
    if args.plot is not None:
        from ._plot import plot

        limit = None
        if args.name is not None:
            found = _limits(store, args.name)
            limit = None if found is None or found[0].max_nano is None else from_nano(found[0].max_nano)
        try:
            plot(entries, args.by, args.plot, limit=limit, title=_title(store, args.name, since))
        except OSError as error:
            raise _args.UsageError(
                f"--plot {args.plot}: cannot be written ({error.strerror or error})"
            ) from None
    if args.json:
        print(
            json.dumps(
                {
                    "store": store.display,
                    "name": args.name,
                    "since": _iso(since),
                    "by": args.by,
                    "calls": len(entries),
                    "spent": str(from_nano(total)),
                    "failed": sum(r["failed"] for r in rows),
                    "expired": sum(r["expired"] for r in rows),
                    "rows": rows,
                },
                indent=2,
            )
        )
        return EXIT_OK
    _render.table(
        [args.by, "calls", "input", "output", "spent", "share"],
        [
            [
                r[args.by],
                r["calls"],
                r["input_tokens"],
                r["output_tokens"],
                _render.usd(Decimal(r["spent"])),
                _share(r["spent"], total),
            ]
            for r in rows
        ]
        + [
            [
                "total",
                len(entries),
                sum(r["input_tokens"] for r in rows),
                sum(r["output_tokens"] for r in rows),
                _render.usd(from_nano(total)),
                "",
            ]
        ],
        title=f"{_title(store, args.name, since)}, by {args.by}",
    )
    expired = sum(r["expired"] for r in rows)
    if expired:
        _render.line(
            f"{expired} of these calls expired: their process died mid-call, and each is charged at what it held "
            "(its tokens are estimates)",
            stream=sys.stdout,
        )
    for path in (args.csv, args.plot):
        if path is not None:
            _render.line(f"wrote {path}", stream=sys.stdout)
    return EXIT_OK


def _share(spent: str, total_nano: int) -> str:
    return "" if not total_nano else f"{Decimal(spent) / from_nano(total_nano):.1%}"


def _title(store: Store, name: str | None, since: float) -> str:
    what = f"budget {name!r}" if name else "every budget"
    return f"spend of {what} in {store.display} since {_when(since)}"


# ------------------------------------------------------------------------------------------ reset
def reset(args: argparse.Namespace) -> int:
    if not args.yes:
        raise _args.UsageError(
            f"reset clears the spend of {args.name!r} for every process: add --yes to do it"
        )
    store = _open(args.store)
    if store.describe(args.name) is None:
        raise _args.UsageError(f"no shared budget named {args.name!r} in {store.display}")
    store.reset(args.name)
    _render.line(
        f"reset shared budget {args.name!r} in {store.display} at {_when(time.time())}", stream=sys.stdout
    )
    return EXIT_OK
