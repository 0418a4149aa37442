"""What only the Redis store does: URL forms and clients, keys, scripts the server forgot, errors without
passwords, and async operations that leave the event loop free."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shekel import BudgetConfigError, StoreError
from shekel.ledger.shared import Ask, Charge, SharedLimits, parse_window

redis = pytest.importorskip("redis")
from shekel.stores import RedisStore  # noqa: E402

LIMITS = SharedLimits("tenant:42", parse_window("day"), 10**9, None, None)


def _ask(hold_id: str) -> Ask:
    return Ask(hold_id, "me", 30, 5, 10, 5, 5, 2, 600.0)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_client_and_a_unix_socket_url_reach_the_same_ledger(redis_store_url: str) -> None:
    by_url = RedisStore(redis_store_url)
    by_url.reserve([LIMITS], _ask("h:1:1"))
    by_url.settle([LIMITS.name], "h:1:1", Charge(123, 1, 1, "ok"))
    by_url.flush()  # a settle waits to be sent with the next command (or a few ms): another store reads now
    client = redis.Redis.from_url(redis_store_url)
    by_client = RedisStore(client)
    assert by_client.read(LIMITS).spent == 123
    assert by_client.display == redis_store_url
    socket_path = client.config_get("unixsocket").get("unixsocket")
    assert socket_path, "tests/_redis_server.py starts the server with a unix socket"
    assert RedisStore(f"unix://{socket_path}?db=0").read(LIMITS).spent == 123
    client.close()


def test_keys_are_namespaced_by_budget_name(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    store.reserve([LIMITS], _ask("h:1:1"))
    store.settle([LIMITS.name], "h:1:1", Charge(1, 1, 1, "ok"))
    store.flush()
    keys = sorted(k.decode() for k in store._client.keys("*"))
    assert keys == [
        "shekel:names",
        "shekel:{tenant:42}:buckets",
        "shekel:{tenant:42}:config",
        "shekel:{tenant:42}:log",
    ]
    assert store._client.ttl("shekel:{tenant:42}:buckets") > 86400  # a calendar day's buckets expire


def test_scripts_the_server_forgot_are_loaded_again(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    store.read(LIMITS)
    store._client.script_flush()
    store.reserve([LIMITS], _ask("h:1:1"))
    assert store.read(LIMITS).inflight == 1


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_a_server_that_is_down_is_a_store_error_without_the_password(scheme: str) -> None:
    store = RedisStore(f"{scheme}://admin:s3cretPASS@127.0.0.1:{_closed_port()}/0")
    with pytest.raises(StoreError, match="could not reserve a call") as caught:
        store.reserve([LIMITS], _ask("h:1:1"))
    assert "s3cretPASS" not in str(caught.value) and "127.0.0.1" in str(caught.value)


def test_a_store_made_of_something_else_is_a_config_error() -> None:
    with pytest.raises(BudgetConfigError, match=r"redis\.Redis client"):
        RedisStore(42)  # type: ignore[arg-type]


async def test_async_operations_leave_the_event_loop_free(redis_store_url: str) -> None:
    """While the server is busy (another client's slow script), an awaited reserve waits without blocking
    the loop: a ticker task keeps running."""
    store = RedisStore(redis_store_url)
    await store.aread(LIMITS)  # this loop's client, connected
    other = redis.asyncio.Redis.from_url(redis_store_url)
    busy = (
        "local function now() local t = redis.call('TIME') return t[1] + t[2] / 1e6 end "
        "local stop = now() + 0.5 while now() < stop do end return 1"
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick = asyncio.create_task(ticker())
    slow = asyncio.create_task(other.eval(busy, 0))
    await asyncio.sleep(0.05)
    before = ticks
    grant = await store.areserve([LIMITS], _ask("h:1:1"))
    assert slow.done()  # the server ran the slow script first: the reserve waited for it
    assert ticks > before  # and the loop ran meanwhile
    await store.asettle([LIMITS.name], "h:1:1", Charge(grant.money, 1, 1, "ok"))
    await slow
    tick.cancel()
    await other.aclose()
    assert (await store.aread(LIMITS)).spent == grant.money


def test_running_totals_are_rebuilt_from_the_holds_when_missing(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    limits = SharedLimits("rebuilt", parse_window(None), 10**15, None, None)
    a = store.reserve([limits], _ask("h:1:1"))
    b = store.reserve([limits], _ask("h:1:2"))
    store._client.delete("shekel:{rebuilt}:held")  # as a store written by a version without totals
    figures = store.read(limits)
    assert (figures.inflight, figures.reserved) == (2, a.money + b.money)
    store.release([limits.name], "h:1:1")
    assert store.read(limits).reserved == b.money
    store.close()


def test_a_hold_reserved_twice_under_one_id_is_held_once(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    limits = SharedLimits("twice", parse_window(None), 10**15, None, None)
    store.reserve([limits], _ask("h:1:1"))
    grant = store.reserve([limits], _ask("h:1:1"))
    figures = store.read(limits)
    assert (figures.inflight, figures.reserved) == (1, grant.money)
    store.release([limits.name], "h:1:1")
    assert store.read(limits).inflight == 0
    store.close()


def test_no_totals_key_while_nothing_is_held(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    limits = SharedLimits("idle", parse_window(None), 10**15, None, None)
    store.reserve([limits], _ask("h:1:1"))
    assert store._client.get("shekel:{idle}:held") is not None
    store.settle([limits.name], "h:1:1", Charge(1, 1, 1, "ok"))
    store.flush()
    assert not store._client.exists("shekel:{idle}:held")
    store.close()
