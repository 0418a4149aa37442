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


#: Widths of the periods the lower panel may use (seconds), and their names.
_PERIODS = (
    (1, "second"),
    (5, "5 s"),
    (15, "15 s"),
    (60, "minute"),
    (300, "5 min"),
    (900, "15 min"),
    (3600, "hour"),
    (6 * 3600, "6 h"),
    (86400, "day"),
)
#: The most bars a span is cut into.
MAX_BARS = 48


def _period(entries: list[dict[str, Any]], by: str) -> tuple[int, str]:
    """The width (seconds) and name of the lower panel's periods: ``--by day``/``hour``, else the shortest
    that cuts the log's span into at most ``MAX_BARS``."""
    if by == "day":
        return 86400, "day"
    if by == "hour":
        return 3600, "hour"
    span = entries[-1]["at"] - entries[0]["at"] if entries else 0
    for seconds, name in _PERIODS:
        if span / seconds <= MAX_BARS:
            return seconds, name
    return 86400, "day"


def _floor(at: float, seconds: int) -> datetime:
    return datetime.fromtimestamp(at // seconds * seconds, timezone.utc)


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

    seconds, period = _period(entries, by)
    width = timedelta(seconds=seconds)

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
        per[key][_floor(e["at"], seconds)] += cost
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
    bottom.set_ylabel(f"spend per {period}\n(USD)")
    bottom.set_xlabel("time (UTC)")
    if base and max(base) > 0:
        bottom.set_ylim(0, max(base) * 1.15)  # room above the tallest bar (and for the legend)
    bottom.grid(True, axis="y", alpha=0.3)
    if shown:
        bottom.legend(title=by if by not in ("day", "hour") else None, loc="best", fontsize=8)
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call,unused-ignore]
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))  # type: ignore[no-untyped-call,unused-ignore]
    if not entries:
        top.text(0.5, 0.5, "no calls in this period", transform=top.transAxes, ha="center")
    figure.savefig(path, dpi=110)
