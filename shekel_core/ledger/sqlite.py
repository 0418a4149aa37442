"""Shared budgets in an SQLite file: one cap for every process on one machine.

The standard library's ``sqlite3``, in WAL mode; every operation is one ``BEGIN IMMEDIATE`` transaction
(writers take turns, with a busy timeout), so a check and the hold it allows are atomic across processes.
Safe for many processes on one machine; not on a network file system (NFS, SMB), whose locks SQLite
cannot trust: use Redis across hosts.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import BudgetConfigError
from .shared import (
    LOG_LIMIT,
    Ask,
    Charge,
    Figures,
    Grant,
    SharedLimits,
    Store,
    StoreNoRoom,
    Window,
    parse_window,
    runs_of,
    store_error,
    window_mismatch,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    name TEXT PRIMARY KEY, window TEXT NOT NULL, max_nano INTEGER, max_calls INTEGER, max_tokens INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    id TEXT NOT NULL, name TEXT NOT NULL, owner TEXT NOT NULL, money INTEGER NOT NULL,
    tokens INTEGER NOT NULL, deadline REAL NOT NULL, model TEXT, PRIMARY KEY (id, name)
);
CREATE INDEX IF NOT EXISTS holds_by_name ON holds (name, deadline);
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT NOT NULL, window TEXT NOT NULL, bucket INTEGER NOT NULL, money INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, window, bucket)
);
CREATE TABLE IF NOT EXISTS expired (
    id TEXT NOT NULL, name TEXT NOT NULL, window TEXT NOT NULL, bucket INTEGER NOT NULL,
    money INTEGER NOT NULL, tokens INTEGER NOT NULL, at REAL NOT NULL, PRIMARY KEY (id, name)
);
CREATE TABLE IF NOT EXISTS calls (
    at REAL NOT NULL, name TEXT NOT NULL, model TEXT, provider TEXT, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, cost_nano INTEGER NOT NULL, estimated INTEGER NOT NULL,
    expired INTEGER NOT NULL, outcome TEXT NOT NULL, path TEXT, host TEXT, hold TEXT
);
CREATE INDEX IF NOT EXISTS calls_by_name ON calls (name, at);
"""

#: Running totals of each budget's holds, kept by triggers (every way a hold is taken or ends, by any process,
#: of any version, updates them in its own transaction): a reserve reads one row, not every hold, so its cost
#: does not grow with the calls in flight. Made in one transaction with its first fill, from the holds a file
#: written before it already has.
_HELD = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS held (
    name TEXT PRIMARY KEY, money INTEGER NOT NULL, tokens INTEGER NOT NULL, count INTEGER NOT NULL
);
INSERT OR IGNORE INTO held SELECT name, SUM(money), SUM(tokens), COUNT(*) FROM holds GROUP BY name;
CREATE TRIGGER IF NOT EXISTS held_on_insert AFTER INSERT ON holds BEGIN
    INSERT INTO held VALUES (new.name, new.money, new.tokens, 1) ON CONFLICT (name) DO UPDATE SET
        money = money + excluded.money, tokens = tokens + excluded.tokens, count = count + 1;
END;
CREATE TRIGGER IF NOT EXISTS held_on_delete AFTER DELETE ON holds BEGIN
    UPDATE held SET money = money - old.money, tokens = tokens - old.tokens, count = count - 1
        WHERE name = old.name;
END;
CREATE TRIGGER IF NOT EXISTS held_on_update AFTER UPDATE OF money, tokens, name ON holds BEGIN
    UPDATE held SET money = money - old.money, tokens = tokens - old.tokens, count = count - 1
        WHERE name = old.name;
    INSERT INTO held VALUES (new.name, new.money, new.tokens, 1) ON CONFLICT (name) DO UPDATE SET
        money = money + excluded.money, tokens = tokens + excluded.tokens, count = count + 1;
END;
COMMIT;
"""

#: How long the ids of expired holds are kept, so that a worker settling late replaces their charge.
EXPIRED_KEPT_SECONDS = 7 * 86400


class SQLiteStore(Store):
    """Shared budgets in the SQLite file at ``path`` (created, with its folder, on first use). A relative
    ``path`` is taken from the working directory now: the store stays on that file if the process changes
    directory."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser().absolute()
        self.display = f"sqlite:///{self.path}"
        if str(path).startswith((":memory:", "file:")):
            raise BudgetConfigError(
                f"store path {str(path)!r}: a shared budget needs a database file that every process opens "
                "(an in-memory database lives and dies with one connection). Name a file, e.g. "
                "sqlite:///budgets.db, or leave store= out for a budget of this process only."
            )
        if self.path.is_dir():
            raise BudgetConfigError(
                f"store {self.display} is a folder: name the database file in it ({self.path / 'budgets.db'})."
            )
        self._busy_timeout = busy_timeout
        self._local = threading.local()

    @property
    def ledger_key(self) -> Hashable:
        """The file, symbolic links resolved: every path to it is one ledger."""
        return ("sqlite", os.path.realpath(self.path))

    # ---------------------------------------------------------------- connections
    def _connection(self) -> sqlite3.Connection:
        local = self._local
        connection: sqlite3.Connection | None = getattr(local, "connection", None)
        if connection is not None and local.pid == os.getpid():
            try:
                identity = _identity(self.path)
            except FileNotFoundError:
                identity = None
            if identity == local.identity:
                return connection
            # The file was deleted or replaced: a connection to the old one would keep a ledger apart from
            # every process that opens the path now. Reconnect (the old file's holds are gone with it).
            connection.close()
        # A new thread, or a forked child: SQLite connections must not cross either.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'held_on_update'").fetchone():
            connection.executescript(_HELD)
        local.connection, local.pid, local.identity = connection, os.getpid(), _identity(self.path)
        return connection

    def _begin(self) -> sqlite3.Connection:
        """A connection in a write transaction. SQLite answers "database is locked" at once, without its busy
        timeout, in a few cases (a WAL file being recovered or reset as another process closes its last
        connection): those are retried with a short backoff until the busy timeout has passed."""
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.002
        while True:
            try:
                connection = self._connection()
                connection.execute("BEGIN IMMEDIATE")
                return connection
            except sqlite3.OperationalError as error:
                text = str(error).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        try:
            connection = self._begin()
        except (sqlite3.Error, OSError) as error:  # a locked or corrupt file, a folder that cannot be made
            raise store_error(self, action, error) from error
        try:
            yield connection
        except sqlite3.Error as error:
            connection.execute("ROLLBACK")
            raise store_error(self, action, error) from error
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise store_error(self, action, error) from error

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # ---------------------------------------------------------------- operations
    def reserve(self, budgets: list[SharedLimits], ask: Ask) -> Grant:
        no_room: StoreNoRoom | None = None
        with self._transaction("reserve a call") as db:
            now = time.time()
            state: list[tuple[SharedLimits, Figures, Callable[[], tuple[int, int, int]]]] = []
            for budget in budgets:
                unstored = self._stored_window(db, budget.name) is None
                self._register(db, budget, now)
                self._sweep(db, budget.name, now)
                if unstored:
                    self._adopt(db, budget, now)
                state.append(
                    (budget, self._figures(db, budget, now), partial(self._own, db, budget.name, ask.owner))
                )
            try:
                grant = _fit(state, ask)
            except StoreNoRoom as refused:
                no_room = refused  # raised after the commit: the sweep stays done
            else:
                for budget in budgets:
                    db.execute(
                        "INSERT INTO holds (id, name, owner, money, tokens, deadline, model) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            ask.hold_id,
                            budget.name,
                            ask.owner,
                            grant.money,
                            grant.tokens,
                            now + ask.lease,
                            ask.model,
                        ),
                    )
        if no_room is not None:
            raise no_room
        return grant

    def settle(
        self, names: list[str], hold_id: str, charge: Charge, windows: Sequence[str] | None = None
    ) -> None:
        with self._transaction("settle a call") as db:
            now = time.time()
            for i, name in enumerate(names):
                window = self._stored_window(db, name)
                if window is None:  # reset meanwhile: the window the call was held under
                    window = _window("none" if windows is None else windows[i])
                held = db.execute("DELETE FROM holds WHERE id = ? AND name = ? RETURNING 1", (hold_id, name))
                if held.fetchone() is None:
                    self._unexpire(db, name, hold_id)
                bucket = window.bucket(now)
                answered = charge.outcome == "ok"
                self._add(
                    db,
                    name,
                    window,
                    bucket,
                    charge.money,
                    1 if answered else 0,
                    0 if answered else 1,
                    charge.input_tokens,
                    charge.output_tokens,
                )
                logged = db.execute(
                    "INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                    (
                        now,
                        name,
                        charge.model,
                        charge.provider,
                        charge.input_tokens,
                        charge.output_tokens,
                        charge.money,
                        int(charge.estimated),
                        charge.outcome,
                        charge.budget_path,
                        _host(hold_id),
                        hold_id,
                    ),
                )
            # Every 1,000th row of the log, whichever process writes it, prunes: short-lived processes too.
            if logged.lastrowid is not None and logged.lastrowid % 1000 == 0:
                self._prune(db, names, now)

    def release(self, names: list[str], hold_id: str) -> None:
        with self._transaction("release a hold") as db:
            for name in names:
                db.execute("DELETE FROM holds WHERE id = ? AND name = ?", (hold_id, name))

    def renew(self, names: list[str], hold_id: str, lease: float) -> None:
        with self._transaction("renew a lease") as db:
            deadline = time.time() + lease
            for name in names:
                db.execute(
                    "UPDATE holds SET deadline = ? WHERE id = ? AND name = ?", (deadline, hold_id, name)
                )

    def read(self, budget: SharedLimits) -> Figures:
        with self._transaction("read a budget") as db:
            now = time.time()
            self._check_window(db, budget)
            unstored = self._stored_window(db, budget.name) is None
            # None stored: expiries are charged in the reader's window, where it adopts other charges too.
            self._sweep(db, budget.name, now, budget.window if unstored else None)
            if unstored:
                self._adopt(db, budget, now)
            return self._figures(db, budget, now)

    def reset(self, name: str) -> None:
        with self._transaction("reset a budget") as db:
            db.execute("DELETE FROM buckets WHERE name = ?", (name,))
            db.execute("DELETE FROM expired WHERE name = ?", (name,))
            db.execute("DELETE FROM budgets WHERE name = ?", (name,))  # its window too: a new start

    def names(self) -> list[str]:
        with self._transaction("list budgets") as db:
            return [row[0] for row in db.execute("SELECT name FROM budgets ORDER BY name")]

    def describe(self, name: str) -> dict[str, Any] | None:
        with self._transaction("describe a budget") as db:
            row = db.execute(
                "SELECT window, max_nano, max_calls, max_tokens, updated FROM budgets WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            return None
        return {
            "window": row[0],
            "max_nano": row[1],
            "max_calls": row[2],
            "max_tokens": row[3],
            "updated": row[4],
        }

    def log(self, name: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM calls WHERE (? IS NULL OR name = ?) AND (? IS NULL OR at >= ?) ORDER BY at"
        with self._transaction("read the log of calls") as db:
            cursor = db.execute(query, (name, name, since, since))
            columns = [c[0] for c in cursor.description]
            entries = []
            for row in cursor:
                entry = dict(zip(columns, row, strict=True))
                entry["runs"] = runs_of(entry.pop("hold"))
                entries.append(entry)
            return entries

    # ---------------------------------------------------------------- inside a transaction
    def _check_window(self, db: sqlite3.Connection, budget: SharedLimits) -> None:
        row = db.execute("SELECT window FROM budgets WHERE name = ?", (budget.name,)).fetchone()
        if row is not None and row[0] != budget.window.spec:
            raise window_mismatch(self, budget.name, row[0], budget.window.spec)

    def _register(self, db: sqlite3.Connection, budget: SharedLimits, now: float) -> None:
        self._check_window(db, budget)
        db.execute(
            "INSERT INTO budgets VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "max_nano = excluded.max_nano, max_calls = excluded.max_calls, max_tokens = excluded.max_tokens, "
            "updated = excluded.updated",
            (budget.name, budget.window.spec, budget.max_nano, budget.max_calls, budget.max_tokens, now),
        )

    def _stored_window(self, db: sqlite3.Connection, name: str) -> Window | None:
        row = db.execute("SELECT window FROM budgets WHERE name = ?", (name,)).fetchone()
        return None if row is None else _window(row[0])

    def _window_of(self, db: sqlite3.Connection, name: str) -> Window:
        return self._stored_window(db, name) or _window("none")

    def _sweep(self, db: sqlite3.Connection, name: str, now: float, window: Window | None = None) -> None:
        """Charge every hold whose lease ran out at what it held (in ``window``, by default the stored one),
        and remember it as expired."""
        expired = db.execute(
            "DELETE FROM holds WHERE name = ? AND deadline < ? RETURNING id, money, tokens, model",
            (name, now),
        ).fetchall()
        if not expired:
            return
        window = window or self._window_of(db, name)
        bucket = window.bucket(now)
        for hold_id, money, tokens, model in expired:
            self._add(db, name, window, bucket, money, 0, 1, tokens, 0)
            db.execute(
                "INSERT OR REPLACE INTO expired VALUES (?, ?, ?, ?, ?, ?, ?)",
                (hold_id, name, window.spec, bucket, money, tokens, now),
            )
            db.execute(
                "INSERT INTO calls VALUES (?, ?, ?, NULL, ?, 0, ?, 1, 1, 'unknown', NULL, ?, ?)",
                (now, name, model, tokens, money, _host(hold_id), hold_id),
            )

    def _adopt(self, db: sqlite3.Connection, budget: SharedLimits, now: float) -> None:
        """No window is stored for the budget (it was reset, or is new): charges made since by calls held
        under another window are moved into this window's current bucket, not left where it never reads."""
        spec = budget.window.spec
        money, calls, failed, inputs, outputs, rows = db.execute(
            "SELECT COALESCE(SUM(money), 0), COALESCE(SUM(calls), 0), COALESCE(SUM(failed), 0), "
            "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COUNT(*) FROM buckets "
            "WHERE name = ? AND window != ?",
            (budget.name, spec),
        ).fetchone()
        if not rows:
            return
        window = budget.window
        bucket = window.bucket(now)
        # Expiries among the charges moved: a late settle takes their charge back from where it now is (one
        # whose bucket was dropped before keeps pointing at it: its charge is no longer counted anywhere).
        db.execute(
            "UPDATE expired SET window = ?, bucket = ? WHERE name = ? AND window != ? AND EXISTS ("
            "SELECT 1 FROM buckets WHERE buckets.name = expired.name AND buckets.window = expired.window "
            "AND buckets.bucket = expired.bucket)",
            (spec, bucket, budget.name, spec),
        )
        db.execute("DELETE FROM buckets WHERE name = ? AND window != ?", (budget.name, spec))
        self._add(db, budget.name, window, bucket, money, calls, failed, inputs, outputs)

    def _unexpire(self, db: sqlite3.Connection, name: str, hold_id: str) -> None:
        """A hold settled after its lease ran out: take back the charge its expiry made (never counted
        twice); the real charge follows."""
        row = db.execute(
            "DELETE FROM expired WHERE id = ? AND name = ? RETURNING window, bucket, money, tokens",
            (hold_id, name),
        ).fetchone()
        if row is None:
            return
        window, bucket, money, tokens = row
        db.execute(
            "UPDATE buckets SET money = money - ?, failed = failed - 1, input_tokens = input_tokens - ? "
            "WHERE name = ? AND window = ? AND bucket = ?",
            (money, tokens, name, window, bucket),
        )
        db.execute("DELETE FROM calls WHERE name = ? AND hold = ? AND expired = 1", (name, hold_id))

    def _add(
        self,
        db: sqlite3.Connection,
        name: str,
        window: Window,
        bucket: int,
        money: int,
        calls: int,
        failed: int,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        db.execute(
            "INSERT INTO buckets VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, window, bucket) DO UPDATE "
            "SET money = money + excluded.money, calls = calls + excluded.calls, "
            "failed = failed + excluded.failed, input_tokens = input_tokens + excluded.input_tokens, "
            "output_tokens = output_tokens + excluded.output_tokens",
            (name, window.spec, bucket, money, calls, failed, input_tokens, output_tokens),
        )

    def _figures(self, db: sqlite3.Connection, budget: SharedLimits, now: float) -> Figures:
        window = budget.window
        spent, calls, failed, inputs, outputs = db.execute(
            "SELECT COALESCE(SUM(money), 0), COALESCE(SUM(calls), 0), COALESCE(SUM(failed), 0), "
            "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM buckets "
            "WHERE name = ? AND window = ? AND bucket >= ?",
            (budget.name, window.spec, window.first_bucket(now)),
        ).fetchone()
        row = db.execute("SELECT money, tokens, count FROM held WHERE name = ?", (budget.name,)).fetchone()
        reserved, reserved_tokens, inflight = row or (0, 0, 0)
        return Figures(
            spent, reserved, calls, failed, inflight, inputs, outputs, reserved_tokens, window.resets_at(now)
        )

    def _own(self, db: sqlite3.Connection, name: str, owner: str) -> tuple[int, int, int]:
        row = db.execute(
            "SELECT COALESCE(SUM(money), 0), COALESCE(SUM(tokens), 0), COUNT(*) FROM holds "
            "WHERE name = ? AND owner = ?",
            (name, owner),
        ).fetchone()
        return row[0], row[1], row[2]

    def _prune(self, db: sqlite3.Connection, names: list[str], now: float) -> None:
        for name in names:
            window = self._window_of(db, name)
            if window.spec != "none":
                db.execute(
                    "DELETE FROM buckets WHERE name = ? AND bucket < ?", (name, window.first_bucket(now) - 1)
                )
            db.execute(
                "DELETE FROM calls WHERE name = ? AND rowid <= (SELECT rowid FROM calls WHERE name = ? "
                "ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                (name, name, LOG_LIMIT),
            )
        db.execute("DELETE FROM expired WHERE at < ?", (now - EXPIRED_KEPT_SECONDS,))


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _window(spec: str) -> Window:
    return parse_window(None if spec == "none" else spec)


def _host(hold_id: str) -> str:
    return hold_id.split(":", 1)[0]


def _fit(state: list[tuple[SharedLimits, Figures, Callable[[], tuple[int, int, int]]]], ask: Ask) -> Grant:
    """The store's rule for one call over the budgets of one store: the same as the in-memory ledger's
    (``shekel.ledger.memory.hold``), over integer nano-dollars. Each budget comes with a function for what
    the asking process's own holds hold (money, tokens, calls), called only when the call is refused."""
    k = ask.max_tokens
    if k is None:
        bound: int | None = None
        for budget, figures, _ in state:
            if budget.max_nano is not None and ask.output_nano > 0:
                free = budget.max_nano - figures.spent - (0 if ask.patient else figures.reserved)
                by_money = (free - ask.input_nano) // ask.output_nano - ask.margin
                bound = by_money if bound is None else min(bound, by_money)
            if budget.max_tokens is not None:
                used = figures.input_tokens + figures.output_tokens
                free_tokens = budget.max_tokens - used - (0 if ask.patient else figures.reserved_tokens)
                by_tokens = free_tokens - ask.prompt_tokens - ask.margin
                bound = by_tokens if bound is None else min(bound, by_tokens)
        if bound is not None:
            k = max(min(ask.ceiling, bound), 1)
    output = 0 if k is None else k + ask.margin
    money = ask.input_nano + ask.output_nano * output
    tokens = ask.prompt_tokens + output
    least = ask.input_nano + ask.output_nano * (
        (1 if ask.max_tokens is None else ask.max_tokens) + ask.margin
    )
    least_tokens = ask.prompt_tokens + (1 if ask.max_tokens is None else ask.max_tokens) + ask.margin
    checked: dict[str, Figures] = {}
    for budget, figures, own in state:
        checked[budget.name] = figures
        made = figures.calls + figures.failed
        if budget.max_calls is not None and made + figures.inflight >= budget.max_calls:
            own_money, own_tokens, own_calls = own()
            waitable = figures.inflight > own_calls and made + own_calls < budget.max_calls
            raise StoreNoRoom(budget.name, "calls", waitable, figures)
        if budget.max_tokens is not None:
            used = figures.input_tokens + figures.output_tokens
            if used + figures.reserved_tokens + tokens > budget.max_tokens:
                own_money, own_tokens, own_calls = own()
                waitable = (
                    figures.inflight > own_calls and used + own_tokens + least_tokens <= budget.max_tokens
                )
                raise StoreNoRoom(budget.name, "tokens", waitable, figures)
        if budget.max_nano is not None and figures.spent + figures.reserved + money > budget.max_nano:
            own_money, own_tokens, own_calls = own()
            waitable = figures.inflight > own_calls and figures.spent + own_money + least <= budget.max_nano
            raise StoreNoRoom(budget.name, "usd", waitable, figures, money)
    return Grant(k, money, tokens, checked)
