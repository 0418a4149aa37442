"""Helpers of review round 16: a SQLite store another connection locks (the store is down), `shekel status`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

HI = [{"role": "user", "content": "hi there"}]
PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token: $0.015 a call
COST = 0.015
_CLEARED = ("SHEKEL_RUN", "SHEKEL_BUDGET_USD", "SHEKEL_PRICING", "SHEKEL_STORE", "HF_TOKEN")


class Lock:
    """Another connection holding the SQLite file's write lock (as an open `sqlite3` shell does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def take(self) -> None:
        self.conn = sqlite3.connect(str(self.path), isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def drop(self) -> None:
        assert self.conn is not None
        self.conn.execute("ROLLBACK")
        self.conn.close()
        self.conn = None


def shekel(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    return subprocess.run(
        [sys.executable, "-m", "shekel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def status(url: str, name: str) -> dict[str, Any]:
    """`shekel status --json` of one budget."""
    done = shekel("status", "--store", url, name, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = data if isinstance(data, list) else data.get("budgets", data)
    if isinstance(rows, dict):
        rows = list(rows.values()) if name not in rows else [rows[name]]
    for row in rows:
        if row.get("name", name) == name:
            return row
    raise AssertionError(done.stdout)
