"""Virtual time for the stores' tests: SQLite's clock replaced, Redis's server clock offset."""

from __future__ import annotations

import time
import time as _time
from collections.abc import Callable
from typing import Any

import pytest

from shekel.ledger import sqlite as sqlite_module


def sqlite_clock(monkeypatch: pytest.MonkeyPatch, start: float) -> Callable[[float], None]:
    """Replace the SQLite store's ``time.time()`` by a value the test sets (the setter is returned)."""
    now = [start]

    class Clock:
        time = staticmethod(lambda: now[0])
        monotonic = staticmethod(_time.monotonic)
        sleep = staticmethod(_time.sleep)

    monkeypatch.setattr(sqlite_module, "time", Clock)
    return lambda value: now.__setitem__(0, value)


def redis_clock(store: Any) -> Callable[[float], None]:
    """Move a RedisStore's server clock so that its scripts read ``value`` as the time now."""

    def set_clock(value: float) -> None:
        store._clock_offset = value - time.time()

    return set_clock
