"""``shekel report --plot``: cumulative spend over time above, spend per period below, stacked by the
``--by`` key, with the budget's limit as a line. Rendered by matplotlib (``pip install "shekel[plot]"``)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ..ledger.shared import from_nano
from . import _args

#: Series drawn in the stacked bars; the rest are summed as "other".
MAX_SERIES = 8


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise _args.UsageError('--plot needs matplotlib: pip install "shekel[plot]"') from None
    return matplotlib


def _period(entries: list[dict[str, Any]], by: str) -> str:
    if by in ("day", "hour"):
        return by
    span = entries[-1]["at"] - entries[0]["at"] if entries else 0
    return "hour" if span <= 2 * 86400 else "day"


def _floor(at: float, period: str) -> datetime:
    moment = datetime.fromtimestamp(at, timezone.utc)
    if period == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _series_key(entry: dict[str, Any], by: str) -> str:
    if by in ("day", "hour"):
        return "spend"
    if by == "budget":
        return str(entry.get("name") or entry.get("budget") or "-")
    return str(entry.get(by) or "(unknown)")


def plot(entries: list[dict[str, Any]], by: str, path: str, *, limit: Decimal | None, title: str) -> None:
    """Write the plot of ``entries`` (a store's log, oldest first) to ``path`` (.png or .svg)."""
    _matplotlib()
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    period = _period(entries, by)
    width = timedelta(hours=1) if period == "hour" else timedelta(days=1)

    figure = Figure(figsize=(10, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    figure.suptitle(title, fontsize=11)

    times = [datetime.fromtimestamp(e["at"], timezone.utc) for e in entries]
    running = Decimal(0)
    cumulative = []
    for e in entries:
        running += from_nano(int(e["cost_nano"]))
        cumulative.append(float(running))
    if times:
        top.step(times, cumulative, where="post", color="tab:blue", label="cumulative spend")
    if limit is not None:
        top.axhline(float(limit), color="tab:red", linestyle="--", label=f"limit ${limit}")
    top.set_ylabel("cumulative spend (USD)")
    top.set_ylim(bottom=0)
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left")

    per: dict[str, dict[datetime, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for e in entries:
        key = _series_key(e, by)
        cost = from_nano(int(e["cost_nano"]))
        per[key][_floor(e["at"], period)] += cost
        totals[key] += cost
    ranked = sorted(totals, key=lambda k: -totals[k])
    shown, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    if rest:
        other: dict[datetime, Decimal] = defaultdict(Decimal)
        for key in rest:
            for slot, cost in per[key].items():
                other[slot] += cost
        per["other"] = other
        shown.append("other")
    slots = sorted({slot for key in shown for slot in per[key]})
    base = [0.0] * len(slots)
    for key in shown:
        heights = [float(per[key].get(slot, 0)) for slot in slots]
        bottom.bar(slots, heights, width=width * 0.8, bottom=base, align="edge", label=key)
        base = [b + h for b, h in zip(base, heights, strict=True)]
    bottom.set_ylabel(f"spend per {period} (USD)")
    bottom.set_xlabel("time (UTC)")
    bottom.grid(True, axis="y", alpha=0.3)
    if shown:
        bottom.legend(title=by if by not in ("day", "hour") else None, loc="upper left", fontsize=8)
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    if not entries:
        top.text(0.5, 0.5, "no calls in this period", transform=top.transAxes, ha="center")
    figure.savefig(path, dpi=110)
