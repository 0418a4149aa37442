"""Shared budgets in Redis (or Valkey): one cap for every process on every host.

Every operation is one Lua script, run atomically by the server (reserve over every budget of a chain in
this store, settle, release, renew, read, reset, and the log), loaded once and called by its SHA
(``EVALSHA``; reloaded if the server lost it). The scripts read the server's clock (``TIME``), so hosts with
skewed clocks agree on leases and windows. The rule that decides whether a call fits is the one of
:class:`~shekel.stores.SQLiteStore`, over the same integer nano-dollars. Keys are ``shekel:{name}:...``
(see :mod:`shekel.ledger._redis_lua`); Redis Cluster is not supported (a chain's budgets live in
different hash slots).

Async calls (``areserve``, ``asettle``, ``arelease``, ``aread``) use ``redis.asyncio`` and never block the
event loop; with a client passed in (a sync ``redis.Redis``) they run in a worker thread instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import weakref
from collections.abc import Hashable, Sequence
from typing import Any

from ..errors import BudgetConfigError, StoreError
from . import _redis_lua as lua
from ._redis_wire import Wire
from .shared import (
    LOG_LIMIT,
    Ask,
    Charge,
    Figures,
    Grant,
    SharedLimits,
    Store,
    StoreNoRoom,
    display_url,
    runs_of,
    store_error,
    unreadable_url,
    userinfo_end,
    window_mismatch,
)

try:
    import redis
    import redis.asyncio as aredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as error:  # pragma: no cover - redis-py is an optional extra
    raise ImportError(
        f'shekel\'s Redis store needs redis-py: pip install "shekel[redis]" ({error})'
    ) from None

_NAMES = "shekel:names"
#: Connection defaults, unless the URL sets them (``?socket_timeout=...``).
_TIMEOUTS = {"socket_connect_timeout": 5.0, "socket_timeout": 30.0}


def _prefix(name: str) -> str:
    return f"shekel:{{{name}}}:"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


class RedisStore(Store):
    """Shared budgets in the Redis (or Valkey) server at ``url_or_client``: a ``redis://``, ``rediss://`` or
    ``unix://`` URL as redis-py reads it, or a ``redis.Redis`` client."""

    def __init__(self, url_or_client: str | redis.Redis) -> None:
        #: Seconds added to the server's clock (tests move time forward with it; 0 otherwise).
        self._clock_offset = 0.0
        self._url: str | None
        if isinstance(url_or_client, str):
            self._url = url_or_client
            self.display = display_url(url_or_client)
            _check_url(url_or_client, self.display)
            # No retries: a script whose answer was lost may have run (a settle sent twice would charge twice).
            try:
                self._client: redis.Redis = redis.Redis.from_url(
                    url_or_client, **self._options(url_or_client)
                )
            except ValueError as error:
                raise BudgetConfigError(unreadable_url(self.display, url_or_client, error)) from None
        elif isinstance(url_or_client, redis.Redis):
            self._url = None
            self._client = url_or_client
            pool = url_or_client.connection_pool
            kwargs = pool.connection_kwargs
            path = kwargs.get("path")
            service = getattr(pool, "service_name", None)
            if path:
                where = f"unix://{path}"
            elif "host" not in kwargs and service:  # Sentinel: the service, wherever its master is now
                where = f"redis+sentinel://{service}"
            else:
                where = f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
            self.display = f"{where}/{kwargs.get('db', 0)}"
        else:
            raise BudgetConfigError(
                f"RedisStore takes a redis://, rediss:// or unix:// URL or a redis.Redis client, got "
                f"{type(url_or_client).__name__}."
            )
        try:  # options redis-py checks only as it makes a connection (ssl_cert_reqs, protocol): now
            first = self._client.connection_pool.connection_class(
                **self._client.connection_pool.connection_kwargs
            )
        except (redis.RedisError, ValueError, TypeError) as error:
            raise BudgetConfigError(f"store {self.display}: {error}. Fix the URL's options.") from None
        self._wire = Wire(
            self._client.connection_pool,
            {name: getattr(lua, name) for name in _SCRIPTS},
            deferred="SETTLE",
            folds={"RESERVE": "SETTLES_THEN_RESERVE"},
            resend=frozenset({"UNDO"}),
        )
        self._wire.keep(first)
        self._ledger_key = _ledger_key_of(self._client, self)
        with _stores_lock:
            _stores.add(self)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    @property
    def ledger_key(self) -> Hashable:
        """The server's address (host as written, port; or socket path) and database number: a URL and a
        client of one database are one ledger."""
        return self._ledger_key

    def _waiting_aliases(self) -> list[RedisStore]:
        """Other store objects of this ledger (a budget opened through a URL and one through a client of the
        same database) with settles waiting: a read or reset must see them too."""
        return [
            other
            for other in _every_store()
            if other is not self and other._ledger_key == self._ledger_key and other._wire.waiting
        ]

    def _send_aliases(self) -> None:
        for other in self._waiting_aliases():
            other.flush()

    @staticmethod
    def _options(url: str) -> dict[str, Any]:
        query = url.partition("?")[2]
        options: dict[str, Any] = {k: v for k, v in _TIMEOUTS.items() if k not in query}
        options["retry"] = Retry(NoBackoff(), 0)
        return options

    # ---------------------------------------------------------------- calling scripts
    def _run(
        self,
        script: str,
        action: str,
        keys: list[str],
        args: list[Any],
        in_order: bool = True,
        undo: tuple[str, list[str], list[Any]] | None = None,
    ) -> Any:
        try:
            return self._wire.call(script, keys, args, in_order, undo)
        except (redis.RedisError, OSError) as error:
            raise store_error(self, action, error) from error

    def _ascripts(self) -> dict[str, Any] | None:
        """This event loop's async client's scripts (None: a client was passed in, use a thread)."""
        if self._url is None:
            return None
        loop = asyncio.get_running_loop()
        scripts = self._async.get(loop)
        if scripts is None:
            client = aredis.Redis.from_url(self._url, **self._options(self._url))
            scripts = {name: client.register_script(getattr(lua, name)) for name in _SCRIPTS}
            scripts["client"] = client
            self._async[loop] = scripts
        return scripts

    async def _arun(self, script: str, action: str, keys: list[str], args: list[Any]) -> Any:
        scripts = self._ascripts()
        if scripts is None:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._run, script, action, keys, args
            )
        try:
            return await scripts[script](keys=keys, args=args)
        except (redis.RedisError, OSError) as error:
            raise store_error(self, action, error) from error

    def flush(self) -> None:
        try:
            self._wire.flush()
        except (redis.RedisError, OSError) as error:
            raise store_error(self, "send settles", error) from error

    @property
    def waiting(self) -> bool:
        return self._wire.waiting

    def close(self) -> None:
        """Send the settles waiting, and close the connections (the store reconnects when used again)."""
        try:
            self._wire.close()
        except (redis.RedisError, OSError) as error:
            raise store_error(self, "send settles", error) from error
        finally:
            self._client.close()

    # ---------------------------------------------------------------- operations
    def _reserve_args(self, budgets: list[SharedLimits], ask: Ask) -> tuple[list[str], list[Any]]:
        args: list[Any] = [
            repr(self._clock_offset),
            LOG_LIMIT,
            ask.hold_id,
            ask.owner,
            ask.input_nano,
            ask.output_nano,
            ask.prompt_tokens,
            _opt(ask.max_tokens),
            ask.ceiling,
            ask.margin,
            repr(float(ask.lease)),
            ask.model or "",
            "1" if ask.patient else "0",
        ]
        for budget in budgets:
            args += [
                budget.name,
                budget.window.spec,
                _opt(budget.max_nano),
                _opt(budget.max_calls),
                _opt(budget.max_tokens),
            ]
        return [_prefix(b.name) for b in budgets], args

    def _granted(self, budgets: list[SharedLimits], answer: list[Any]) -> Grant:
        kind = _text(answer[0])
        if kind == "undone":  # only a reserve its process gave up gets this, and that process reads no answer
            raise StoreError(
                f"shared budget store {self.display} answered a reservation this process had given up "
                "(its answer was lost before); nothing is held: try the call again."
            )
        if kind == "window":
            self._mismatch(budgets, _text(answer[2]), _text(answer[3]))
        now = float(_text(answer[1]))
        if kind == "no":
            name = _text(answer[2])
            window = next(b.window for b in budgets if b.name == name)
            raise StoreNoRoom(
                name,
                _text(answer[3]),
                _text(answer[4]) == "1",
                _figures(answer[6:], window.resets_at(now)),
                int(answer[5]),
            )
        k = _text(answer[2])
        checked = {
            b.name: _figures(answer[5 + 8 * i : 13 + 8 * i], b.window.resets_at(now))
            for i, b in enumerate(budgets)
        }
        return Grant(int(k) if k else None, int(answer[3]), int(answer[4]), checked)

    def _mismatch(self, budgets: list[SharedLimits], name: str, stored: str) -> None:
        asked = next(b.window.spec for b in budgets if b.name == name)
        raise window_mismatch(self, name, stored, asked)

    def reserve(self, budgets: list[SharedLimits], ask: Ask) -> Grant:
        keys, args = self._reserve_args(budgets, ask)
        # A reserve whose answer is lost may have run, or may still run: it is undone with the next command
        # (the call is refused), instead of holding room until its lease ends and being charged then.
        return self._granted(
            budgets, self._run("RESERVE", "reserve a call", keys, args, False, _undo(keys, ask))
        )

    async def areserve(self, budgets: list[SharedLimits], ask: Ask) -> Grant:
        keys, args = self._reserve_args(budgets, ask)
        try:
            answer = await self._arun("RESERVE", "reserve a call", keys, args)
        except StoreError as error:
            cause = error.__cause__
            if isinstance(cause, (redis.ConnectionError, redis.TimeoutError, OSError)) and not _never_sent(
                cause
            ):
                # Its answer may have been lost after it ran: the hold is released as a settle is sent
                # (by this store's sending thread, or with its next command; a no-op if it never ran).
                self._wire.defer(*_undo(keys, ask)[1:], script="UNDO")
            raise
        return self._granted(budgets, answer)

    def _settle_args(
        self, names: list[str], hold_id: str, charge: Charge, windows: Sequence[str] | None
    ) -> tuple[list[str], list[Any]]:
        answered = charge.outcome == "ok"
        entry = json.dumps(
            {
                "model": charge.model,
                "provider": charge.provider,
                "input_tokens": charge.input_tokens,
                "output_tokens": charge.output_tokens,
                "cost_nano": charge.money,
                "estimated": int(charge.estimated),
                "expired": 0,
                "outcome": charge.outcome,
                "path": charge.budget_path,
                "host": hold_id.split(":", 1)[0],
                "hold": hold_id,
            }
        )
        args: list[Any] = [
            repr(self._clock_offset),
            LOG_LIMIT,
            hold_id,
            charge.money,
            1 if answered else 0,
            0 if answered else 1,
            charge.input_tokens,
            charge.output_tokens,
            entry,
            *names,
            *(windows or ()),
        ]
        return [_prefix(n) for n in names], args

    def settle(
        self, names: list[str], hold_id: str, charge: Charge, windows: Sequence[str] | None = None
    ) -> None:
        """Charge the call: sent with this process's next command to the server, or alone within a few
        milliseconds (see :mod:`shekel.ledger._redis_wire`); its hold stays until then."""
        self._wire.defer(*self._settle_args(names, hold_id, charge, windows))

    async def asettle(
        self, names: list[str], hold_id: str, charge: Charge, windows: Sequence[str] | None = None
    ) -> None:
        await self._arun("SETTLE", "settle a call", *self._settle_args(names, hold_id, charge, windows))

    def release(self, names: list[str], hold_id: str) -> None:
        self._run("RELEASE", "release a hold", [_prefix(n) for n in names], [hold_id])

    async def arelease(self, names: list[str], hold_id: str) -> None:
        await self._arun("RELEASE", "release a hold", [_prefix(n) for n in names], [hold_id])

    def renew(self, names: list[str], hold_id: str, lease: float) -> None:
        args = [repr(self._clock_offset), hold_id, repr(float(lease))]
        self._run("RENEW", "renew a lease", [_prefix(n) for n in names], args)

    async def arenew(self, names: list[str], hold_id: str, lease: float) -> None:
        args = [repr(self._clock_offset), hold_id, repr(float(lease))]
        await self._arun("RENEW", "renew a lease", [_prefix(n) for n in names], args)

    def _read_args(self, budget: SharedLimits) -> tuple[list[str], list[Any]]:
        return [_prefix(budget.name)], [repr(self._clock_offset), LOG_LIMIT, budget.name, budget.window.spec]

    def _read(self, budget: SharedLimits, answer: list[Any]) -> Figures:
        if _text(answer[0]) == "window":
            self._mismatch([budget], budget.name, _text(answer[3]))
        return _figures(answer[2:], budget.window.resets_at(float(_text(answer[1]))))

    def read(self, budget: SharedLimits) -> Figures:
        self._send_aliases()
        return self._read(budget, self._run("READ", "read a budget", *self._read_args(budget)))

    async def aread(self, budget: SharedLimits) -> Figures:
        if self._wire.waiting or self._waiting_aliases():  # settles of this process's sync calls come first
            await asyncio.to_thread(self.flush)
            await asyncio.to_thread(self._send_aliases)
        return self._read(budget, await self._arun("READ", "read a budget", *self._read_args(budget)))

    def reset(self, name: str) -> None:
        self._send_aliases()
        self._run("RESET", "reset a budget", [_prefix(name)], [name])

    def names(self) -> list[str]:
        try:
            members: Any = self._client.smembers(_NAMES)
        except (redis.RedisError, OSError) as error:
            raise store_error(self, "list budgets", error) from error
        return sorted(_text(m) for m in members)

    def describe(self, name: str) -> dict[str, Any] | None:
        try:
            raw: Any = self._client.hgetall(_prefix(name) + "config")
        except (redis.RedisError, OSError) as error:
            raise store_error(self, "describe a budget", error) from error
        config = {_text(k): _text(v) for k, v in raw.items()}
        if not config:
            return None
        return {
            "window": config.get("window", "none"),
            "max_nano": int(config["max_nano"]) if config.get("max_nano") else None,
            "max_calls": int(config["max_calls"]) if config.get("max_calls") else None,
            "max_tokens": int(config["max_tokens"]) if config.get("max_tokens") else None,
            "updated": float(config.get("updated", 0)),
        }

    def log(self, name: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        names = [name] if name is not None else self.names()
        self._send_aliases()
        entries = self._run("LOG", "read the log of calls", [_prefix(n) for n in names], names)
        calls = [json.loads(_text(e)) for e in entries]
        for call in calls:
            call["runs"] = runs_of(call.pop("hold", None))
        if since is not None:
            calls = [c for c in calls if c["at"] >= since]
        calls.sort(key=lambda c: c["at"])  # stable: each budget's entries stay in order
        return calls


#: Every store object of this process (to send the settles of those sharing one ledger before a read).
_stores: weakref.WeakSet[RedisStore] = weakref.WeakSet()
_stores_lock = threading.Lock()


def _ledger_key_of(client: redis.Redis, store: RedisStore) -> Hashable:
    """What tells one Redis database from another: socket path or host (as written) and port, or a Sentinel
    service and its sentinels; and the database number. A pool that says neither: the store object alone."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    db = int(kwargs.get("db", 0) or 0)
    if kwargs.get("path"):
        return ("redis", "unix", kwargs["path"], db)
    if "host" in kwargs or type(pool) is redis.ConnectionPool or type(pool) is redis.BlockingConnectionPool:
        return (
            "redis",
            "tcp",
            str(kwargs.get("host", "localhost")).lower(),
            int(kwargs.get("port") or 6379),
            db,
        )
    service = getattr(pool, "service_name", None)
    manager = getattr(pool, "sentinel_manager", None)
    if service and manager is not None:
        sentinels = sorted(
            (
                str(s.connection_pool.connection_kwargs.get("host")),
                s.connection_pool.connection_kwargs.get("port"),
            )
            for s in getattr(manager, "sentinels", ())
        )
        return ("redis", "sentinel", service, tuple(sentinels), db)
    return ("redis", "object", id(store))


def _every_store() -> list[RedisStore]:
    with _stores_lock:
        return list(_stores)


def _new_stores_lock() -> None:
    """In a forked child: a lock of its own (a thread of the parent may have held it as the fork happened)."""
    global _stores_lock
    _stores_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_stores_lock)


_SCRIPTS = ("RESERVE", "SETTLE", "SETTLES_THEN_RESERVE", "RELEASE", "UNDO", "RENEW", "READ", "RESET", "LOG")


def _check_url(url: str, display: str) -> None:
    """Refuse what redis-py would misread instead of failing: user information it would cut short (a password
    holding ``/``, ``?`` or ``#``: it would connect somewhere else and quote the rest of the password in its
    errors) and a ``redis://`` path that is not a database number (redis-py ignores it: database 0)."""
    rest = url.split("://", 1)[1]
    end = userinfo_end(rest)
    if end < 0 or "/" in rest[: max(end, 0)]:
        raise BudgetConfigError(
            f"store URL {display!r}: its password (or a query value or socket path) holds / ? # or @, which redis-py "
            "reads as the URL's path, query or host: percent-encode it (urllib.parse.quote(password, safe=''))."
        )
    if url.startswith("unix://"):
        return
    path = rest[end:].partition("/")[2]
    database = path.partition("?")[0].partition("#")[0].strip("/")
    if database and not database.isdigit():
        raise BudgetConfigError(
            f"store URL {display!r}: the path of a redis:// URL is the database number "
            f"(redis://host:6379/0), not {database!r}."
        )


def _undo(keys: list[str], ask: Ask) -> tuple[str, list[str], list[Any]]:
    """The command that undoes a reserve given up (see ``_redis_lua.UNDO``): its mark outlives any delay the
    reserve could still arrive after (twice its lease)."""
    return "UNDO", keys, [ask.hold_id, max(1, math.ceil(2 * ask.lease))]


def _never_sent(error: BaseException) -> bool:
    """Whether a command failed before it could be written: the connection was never made (redis-py says
    "Error N connecting to" or "Timeout connecting to")."""
    return "connecting to" in str(error)


def _figures(values: list[Any], resets_at: float | None) -> Figures:
    spent, reserved, calls, failed, inflight, inputs, outputs, reserved_tokens = (int(v) for v in values[:8])
    return Figures(spent, reserved, calls, failed, inflight, inputs, outputs, reserved_tokens, resets_at)


__all__ = ["RedisStore"]
