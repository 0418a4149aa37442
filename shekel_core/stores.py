"""Stores for shared budgets: ``budget(..., name="job", store="sqlite:///budgets.db")``.

>>> from shekel.stores import SQLiteStore, open_store
>>> store = open_store("sqlite:///budgets.db")  # the same object for the same URL, in one process

URLs:

* ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` (the SQLAlchemy convention), and
  ``sqlite://`` alone for ``budgets.db`` in the user's data directory (``platformdirs``): every process on one
  machine;
* ``redis://``, ``rediss://`` and ``unix://``, as redis-py reads them (Valkey works the same): every host.

``store="env"`` in ``budget()`` takes the URL from the ``SHEKEL_STORE`` environment variable.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .errors import BudgetConfigError
from .ledger.shared import Store, display_url
from .ledger.sqlite import SQLiteStore

#: The environment variable ``store="env"`` reads.
STORE_ENV = "SHEKEL_STORE"

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_opened: dict[str, Store] = {}
_lock = threading.Lock()


def _new_lock() -> None:
    """In a forked child: a lock of its own (a thread of the parent may have held it as the fork happened)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


def __getattr__(name: str) -> Any:
    if name == "RedisStore":  # imported on use: redis-py is an optional extra
        from .ledger.redis import RedisStore

        return RedisStore
    raise AttributeError(name)


def open_store(spec: str | Store) -> Store:
    """The store a ``store=`` argument names: a :class:`Store` as given, or the one for a URL (one per URL
    per process). Raises :class:`shekel.BudgetConfigError` for an unknown scheme or a missing
    ``SHEKEL_STORE``."""
    if isinstance(spec, Store):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise BudgetConfigError(
            f"store must be a URL ('sqlite:///budgets.db', 'redis://host:6379/0'), 'env' or a store object, "
            f"got {spec!r}."
        )
    url = spec.strip()
    if url == "env":
        url = os.environ.get(STORE_ENV, "").strip()
        if not url:
            raise BudgetConfigError(
                f"store='env' reads the store URL from {STORE_ENV}, which is not set (or empty). Set it, e.g. "
                f"{STORE_ENV}=sqlite:///budgets.db, or pass the URL itself."
            )
    # One store per file (a relative path is taken from the working directory now), else per URL.
    key = f"sqlite:{_sqlite_path(url).absolute()}" if url.startswith("sqlite://") else url
    with _lock:
        store = _opened.get(key)
        if store is None:
            store = _opened[key] = _from_url(url)
        return store


def _sqlite_path(url: str) -> Path:
    """The file an ``sqlite://`` URL names."""
    path = url[len("sqlite://") :]
    if path in ("", "/"):
        return _default_sqlite_path()
    if not path.startswith("/"):
        raise BudgetConfigError(
            f"store URL {display_url(url)!r}: write sqlite:///relative.db or sqlite:////absolute/path.db."
        )
    if "?" in path or path.endswith("/"):
        raise BudgetConfigError(
            f"store URL {display_url(url)!r}: write the database file's path alone "
            "(sqlite:///relative.db or sqlite:////absolute/path.db): no folder, no ?options."
        )
    return Path(path[1:])  # "/relative.db" -> "relative.db", "//abs/path.db" -> "/abs/path.db"


def _from_url(url: str) -> Store:
    if url.startswith("sqlite://"):
        return SQLiteStore(_sqlite_path(url))
    if url.startswith(_REDIS_SCHEMES):
        try:
            from .ledger.redis import RedisStore
        except ImportError as error:
            raise BudgetConfigError(
                f'store URL {display_url(url)!r} needs redis-py: pip install "shekel[redis]" ({error}).'
            ) from None
        store: Store = RedisStore(url)
        return store
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise BudgetConfigError(
        f"store URL scheme {scheme!r} is not one shekel knows: use sqlite:///path.db (one machine) or "
        "redis://host:6379/0, rediss://... or unix://... (many hosts)."
    )


def _default_sqlite_path() -> Path:
    try:
        from platformdirs import user_data_dir
    except ImportError:  # platformdirs is a dependency; a stripped install falls back to XDG's default
        return (
            Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "shekel" / "budgets.db"
        )
    return Path(user_data_dir("shekel", appauthor=False)) / "budgets.db"


__all__ = ["STORE_ENV", "SQLiteStore", "Store", "open_store"]  # and RedisStore, imported on use
