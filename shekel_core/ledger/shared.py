"""Budgets shared by many processes: what every store keeps, and how its figures are counted.

A shared budget is a name in a store (SQLite on one machine, Redis for many hosts). Every process that
opens the same name shares one ledger: the holds of calls in flight (each with a lease), the spend per
window bucket, and a log of settled calls. Each process enforces the limits it passes against the shared
figures, in one atomic step per store (one SQLite transaction, one Redis Lua script).

Money in a store is integer nano-dollars (1e-9 USD), rounded up wherever rounding could let a call pass a
cap: holds and charges round up. Token and call counts are integers.

Windows (``window=``):

* ``None``: one bucket; the spend accumulates until ``reset()``.
* rolling, ``W`` seconds (``90``, ``"90s"``, ``"15m"``, ``"1h"``, ``"24h"``, ``"7d"``): the window is cut into
  60 buckets of ``W / 60`` seconds, and the spend of the last ``W`` seconds is the sum of the buckets
  that overlap them. A charge is therefore counted for between ``W`` and ``W + W/60`` seconds: never less
  than the true spend of the last ``W`` seconds, at most one bucket (1/60 of the window) longer.
* calendar, ``"day"``, ``"week"`` (from Monday) or ``"month"``, in UTC: one bucket per period, reset at its
  boundary.

A call is charged in the bucket of the time it settles, and holds count against whichever window is
current, so the cap holds in every window at every moment.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, Decimal
from itertools import count
from typing import Any

from ..errors import BudgetConfigError, StoreError

#: nano-dollars per dollar.
NANO = Decimal(1_000_000_000)
#: Buckets per rolling window.
ROLLING_BUCKETS = 60
#: The largest exact integer in a Redis Lua number (a double): caps and sums of money must stay below it.
MAX_EXACT_NANO = 2**53 - 1
#: Settled calls a store keeps in its log, per budget (the oldest go first).
LOG_LIMIT = 100_000

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CALENDAR = ("day", "week", "month")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def nano_up(amount: Decimal) -> int:
    """``amount`` USD in whole nano-dollars, rounded up (the direction that keeps a cap safe)."""
    return int((amount * NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nano(nano: int) -> Decimal:
    return Decimal(nano) / NANO


@dataclass(frozen=True, slots=True)
class Window:
    """How a shared budget's spend is bucketed. ``spec`` is its canonical text (stored beside the budget)."""

    spec: str
    seconds: int | None = None  # rolling
    calendar: str | None = None  # "day", "week" or "month"

    @property
    def bucket_seconds(self) -> float | None:
        return None if self.seconds is None else self.seconds / ROLLING_BUCKETS

    def bucket(self, now: float) -> int:
        """The bucket a charge at ``now`` (epoch seconds) goes to."""
        if self.seconds is not None:
            return int(now // self.bucket_seconds)  # type: ignore[operator]
        if self.calendar is not None:
            return int(self.period_start(now).timestamp())
        return 0

    def first_bucket(self, now: float) -> int:
        """The oldest bucket that counts at ``now``."""
        if self.seconds is not None:
            return int((now - self.seconds) // self.bucket_seconds)  # type: ignore[operator]
        return self.bucket(now)

    def period_start(self, now: float) -> datetime:
        day = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.calendar == "week":
            return day - timedelta(days=day.weekday())
        if self.calendar == "month":
            return day.replace(day=1)
        return day

    def resets_at(self, now: float) -> float | None:
        """When the current calendar period ends (None: no fixed reset)."""
        if self.calendar is None:
            return None
        start = self.period_start(now)
        if self.calendar == "day":
            end = start + timedelta(days=1)
        elif self.calendar == "week":
            end = start + timedelta(days=7)
        else:
            end = (start + timedelta(days=32)).replace(day=1)
        return end.timestamp()


NO_WINDOW = Window("none")


#: The longest rolling window (10 years): a store keeps a window's buckets for twice its length.
MAX_WINDOW_SECONDS = 3650 * 86400


def parse_window(window: object) -> Window:
    """``window=`` as a :class:`Window`; raises ``BudgetConfigError`` naming the value and the fix."""
    fix = (
        'Pass window=None, a rolling window in seconds or as text ("90s", "15m", "1h", "24h", "7d"), or a '
        'calendar window ("day", "week", "month", UTC).'
    )
    if window is None:
        return NO_WINDOW
    if isinstance(window, bool):
        raise BudgetConfigError(f"window must be a duration or 'day'/'week'/'month', got {window!r}. {fix}")
    seconds: float | None = None
    if isinstance(window, (int, float)):
        try:
            seconds = float(window)
        except OverflowError:
            seconds = math.inf
    elif isinstance(window, str):
        text = window.strip().lower()
        if text in _CALENDAR:
            return Window(text, calendar=text)
        match = _DURATION.match(text)
        if match is None:
            raise BudgetConfigError(f"window={window!r} is not a duration nor 'day'/'week'/'month'. {fix}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise BudgetConfigError(f"window must be a duration or 'day'/'week'/'month', got {window!r}. {fix}")
    if not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds):
        raise BudgetConfigError(f"window must be a whole number of seconds >= 1, got {window!r}. {fix}")
    if seconds > MAX_WINDOW_SECONDS:
        raise BudgetConfigError(
            f"window={window!r} is longer than 10 years (a store keeps a window's buckets for twice its length): "
            f"{fix} For a spend that never resets, pass window=None."
        )
    return Window(f"{int(seconds)}s", seconds=int(seconds))


def parse_lease(lease: object) -> float:
    fix = "Pass lease=600 (seconds a dead process's hold stays held), or any number of seconds > 0, up to a year."
    if isinstance(lease, bool) or not isinstance(lease, (int, float, Decimal)):
        raise BudgetConfigError(f"lease must be a number of seconds, got {lease!r}. {fix}")
    try:
        value = float(lease)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value <= 0 or value > 365 * 86400:
        raise BudgetConfigError(f"lease must be a finite number of seconds > 0, got {lease!r}. {fix}")
    return value


# ------------------------------------------------------------------------------------------ what is asked
@dataclass(frozen=True, slots=True)
class SharedLimits:
    """One shared budget as one process sees it: its key and the limits this process enforces on it."""

    name: str
    window: Window
    max_nano: int | None
    max_calls: int | None
    max_tokens: int | None


@dataclass(slots=True)
class Ask:
    """What one call asks every shared budget of one store for. ``max_tokens`` None: as many output tokens
    as fit (at most ``ceiling``); then the store grants them."""

    hold_id: str
    owner: str
    input_nano: int
    output_nano: int  # per output token, rounded up
    prompt_tokens: int
    max_tokens: int | None
    ceiling: int
    margin: int
    lease: float
    model: str | None = None
    #: Size a flexible grant against what is not spent (the call waits for holds) rather than not held.
    patient: bool = True


@dataclass(slots=True)
class Grant:
    """A hold taken: the output tokens granted, what is held, and the figures it was checked against."""

    max_tokens: int | None
    money: int
    tokens: int
    #: Each budget's figures in its window as the store checked the call (before its hold).
    figures: dict[str, Figures] = field(default_factory=dict)


@dataclass(slots=True)
class Charge:
    """What a settled call costs, for every shared budget of the hold, and its log entry."""

    money: int
    input_tokens: int
    output_tokens: int
    outcome: str  # "ok", "error" or "unknown"
    model: str | None = None
    provider: str | None = None
    estimated: bool = False
    budget_path: str | None = None


@dataclass(frozen=True, slots=True)
class Figures:
    """A shared budget's figures in its current window, across every process."""

    spent: int  # nano-dollars
    reserved: int
    calls: int
    failed: int
    inflight: int
    input_tokens: int
    output_tokens: int
    reserved_tokens: int
    resets_at: float | None = None


class StoreNoRoom(Exception):
    """A call does not fit in shared budget ``name`` (``reason``: ``"usd"``, ``"calls"``, ``"tokens"``).

    ``waitable``: it would fit if the holds of other callers were released (then waiting can help).
    """

    def __init__(self, name: str, reason: str, waitable: bool, figures: Figures, needed: int = 0) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.waitable = waitable
        self.figures = figures
        self.needed = needed
        #: The budgets of the chain held in the store that refused (set by the caller that asked it).
        self.members: Sequence[Any] = ()
        #: The store was down, and this process's share of the budget refused (``on_store_error="open"``).
        self.down = False


# ------------------------------------------------------------------------------------------ the interface
class Store(ABC):
    """Where shared budgets live. Each operation is atomic across processes; async twins never block."""

    #: The store as shown in errors and reports (never with a password).
    display: str

    @property
    def ledger_key(self) -> Hashable:
        """What tells this store's ledger from others': two store objects with the same key (two URLs of
        one SQLite file, a URL and a client of one Redis database) are one ledger, and a chain's budgets in
        them are held in one step, once. By default the object itself."""
        return id(self)

    @abstractmethod
    def reserve(self, budgets: list[SharedLimits], ask: Ask) -> Grant:
        """Hold the call on every budget (sweeping expired holds first), or raise :class:`StoreNoRoom`."""

    @abstractmethod
    def settle(
        self, names: list[str], hold_id: str, charge: Charge, windows: Sequence[str] | None = None
    ) -> None:
        """Replace the hold by the charge, on every budget (a hold that expired meanwhile: its charge is
        replaced, never doubled); log the call. The charge goes to the window stored for each budget (the
        one its processes read now), or where none is stored (the budget was reset meanwhile) to its window
        in ``windows`` (``Window.spec``, as the call was held), else to no window."""

    @abstractmethod
    def release(self, names: list[str], hold_id: str) -> None:
        """Drop the hold: the call was never sent."""

    @abstractmethod
    def renew(self, names: list[str], hold_id: str, lease: float) -> None:
        """Push the hold's deadline ``lease`` seconds from now (a long stream still being read)."""

    @abstractmethod
    def read(self, budget: SharedLimits) -> Figures:
        """The budget's figures in its current window (expired holds swept first)."""

    @abstractmethod
    def reset(self, name: str) -> None:
        """Forget the budget's spend (its holds of calls in flight stay, and are settled as usual)."""

    @abstractmethod
    def names(self) -> list[str]:
        """The shared budgets in this store."""

    @abstractmethod
    def describe(self, name: str) -> dict[str, Any] | None:
        """What the store knows of a budget: its last limits and window, as processes opened it."""

    @abstractmethod
    def log(self, name: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Settled calls, oldest first: at, name, model, provider, input_tokens, output_tokens, cost_nano,
        estimated, expired, outcome, path, host, and runs (the ids of the ``shekel run`` runs it was made in)."""

    def close(self) -> None:  # noqa: B027 - optional: stores without connections need nothing
        """Close connections (the store reopens them when used again)."""

    def flush(self) -> None:  # noqa: B027 - optional: only stores that send settles late have any
        """Send the settles of this process that wait to be sent with a later command (none by default)."""

    @property
    def waiting(self) -> bool:
        """Whether settles of this process wait to be sent (see :meth:`flush`)."""
        return False

    async def areserve(self, budgets: list[SharedLimits], ask: Ask) -> Grant:
        grant: Grant = await _in_thread(self.reserve, budgets, ask)
        return grant

    async def asettle(
        self, names: list[str], hold_id: str, charge: Charge, windows: Sequence[str] | None = None
    ) -> None:
        await _in_thread(self.settle, names, hold_id, charge, windows)

    async def arelease(self, names: list[str], hold_id: str) -> None:
        await _in_thread(self.release, names, hold_id)

    async def arenew(self, names: list[str], hold_id: str, lease: float) -> None:
        await _in_thread(self.renew, names, hold_id, lease)

    async def aread(self, budget: SharedLimits) -> Figures:
        figures: Figures = await _in_thread(self.read, budget)
        return figures

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display}>"


async def _in_thread(fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# ------------------------------------------------------------------------------------------ identities
_host = socket.gethostname()
_counter = count(1)


def owner(task: object = None) -> str:
    """Who holds a hold: this host, process and thread, and the asyncio task when there is one (a call never
    waits for its own holds, and tasks of one event loop wait for each other's)."""
    base = f"{_host}:{os.getpid()}:{threading.get_ident()}"
    return base if task is None else f"{base}:{id(task)}"


def new_hold_id(runs: str = "") -> str:
    """A new hold's id: who holds it, and ``/`` and the ``shekel run`` runs it is made in (``.`` between)."""
    hold_id = f"{owner()}:{next(_counter)}:{time.time_ns()}"
    return f"{hold_id}/{runs}" if runs else hold_id


def runs_of(hold_id: str | None) -> list[str]:
    """The ``shekel run`` runs a call of hold ``hold_id`` was made in (see :func:`new_hold_id`)."""
    runs = (hold_id or "").partition("/")[2]
    return runs.split(".") if runs else []


def store_error(store: Store, action: str, error: BaseException) -> StoreError:
    """A ``StoreError`` naming the store (without its password) and the fix."""
    said = _scrub(str(error)).rstrip(". ")
    kind = type(error).__name__
    if "Authentication" in kind or re.search(r"\b(NOAUTH|WRONGPASS|AUTH)\b|password", said):
        check = (
            "Check the user name and password in the store's URL (redis://user:password@host:6379/0; "
            "percent-encode special characters)"
        )
    elif "database is locked" in said:
        check = (
            "Another connection holds the file's write lock for longer than the busy timeout (an open sqlite3 "
            "shell, or a transaction left open): close it"
        )
    else:
        check = "Check that the store is reachable"
    return StoreError(
        f"shared budget store {store.display} could not {action}: {kind}: {said}. {check}{OPEN_ADVICE}."
    )


#: The part of a store error's advice only a budget can follow (the ``shekel`` command leaves it out).
OPEN_ADVICE = (
    ", or pass on_store_error='open' to let calls go ahead, held to this process's share of the budget, "
    "while the store cannot be used"
)


#: ``scheme://userinfo@`` (userinfo may itself hold ``@``: the last one ends it) and query strings.
#: User information: up to the last ``@`` before the path, spaces included (redis-py takes a password
#: written unencoded, ``redis://:my secret@host``); in free text it may hide more than the password, never less.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\n]*@")
_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?]*)\?[^\s]*")


def _scrub(text: str) -> str:
    """``text`` with every URL's user information and query string hidden: either may carry a password
    (``redis://user:pw@host``, ``redis://host?password=pw``)."""
    return _QUERY.sub(r"\1?***", _USERINFO.sub(r"\1***@", text))


def window_mismatch(store: Store, name: str, stored: str, asked: str) -> BudgetConfigError:
    """The error for a process that opens a shared budget with another window than the store keeps."""
    return BudgetConfigError(
        f"shared budget {name!r} in {store.display} counts spend over window {stored!r}, and this process "
        f"opened it with window {asked!r}: every process must use the same window for one name. {WINDOW_ADVICE}"
    )


#: How to open a budget whose store keeps another window (the ``shekel`` command gives its own options).
WINDOW_ADVICE = (
    "Use the same window=, another name, or reset the budget (b.reset() forgets its spend and its window)."
)


def userinfo_end(rest: str) -> int:
    """Where the user information of a URL's part after ``scheme://`` ends: after its last ``@`` (a password
    may hold ``/`` or ``@``); 0 when it has none. -1 when an ``@`` follows a ``?`` or ``#``: a password holding
    ``?`` or ``#`` cannot be told from a query or fragment holding ``@`` (``?password=a@b``), so callers hide
    the whole URL (and stores refuse it: percent-encoded, it is unambiguous)."""
    if "@" not in rest:
        return 0
    last = rest.rindex("@")
    marks = [index for index in (rest.find("?"), rest.find("#")) if index >= 0]
    return -1 if marks and min(marks) < last else last + 1


def display_url(url: str) -> str:
    """``url`` without anything that may be a password: its user information, query string and fragment."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _scrub(url)
    end = userinfo_end(rest)
    if end < 0:
        return f"{scheme}://***"
    head = rest[end:]
    cut = min([index for index in (head.find("?"), head.find("#")) if index >= 0], default=len(head))
    return f"{scheme}://{'***@' if end else ''}{head[:cut]}" + (f"{head[cut]}***" if cut < len(head) else "")


def unreadable_url(display: str, url: str, error: BaseException) -> str:
    """Why a library could not read store URL ``url``, without quoting it when the URL has a password
    (the library's message may hold a piece of it)."""
    if userinfo_end(url.partition("://")[2]):
        return (
            f"store URL {display!r} cannot be read ({type(error).__name__}): if its password holds characters "
            "such as ? # / @ or %, percent-encode it (urllib.parse.quote(password, safe=''))."
        )
    return f"store URL {display!r}: {_scrub(str(error))}"
