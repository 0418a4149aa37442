"""Review round 8: attacking the Redis store's one-round-trip wire (``shekel_core/ledger/_redis_wire.py``).

Every test runs against a real ``redis-server``. Tests that kill connections, change the server's config or
stop it start a server of their own (``tests/_redis_server.py``), so that the stores other tests keep open
(``open_store`` keeps one per URL per process) are not touched.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from shekel import StoreError, budget
from shekel.ledger.shared import Ask, Charge, SharedLimits, parse_window

from .._redis_server import redis_server

redis = pytest.importorskip("redis")
from shekel.stores import RedisStore  # noqa: E402

LIMITS = SharedLimits("round8", parse_window("day"), 10**12, None, None)


def _ask(hold_id: str) -> Ask:
    return Ask(hold_id, "me", 30, 5, 10, 5, 5, 2, 600.0)


def _fresh(url: str) -> RedisStore:
    """A store whose budget exists (a settle to a budget never reserved lands in no window)."""
    store = RedisStore(url)
    store.reserve([LIMITS], _ask("h:0:0"))
    store.release([LIMITS.name], "h:0:0")
    return store


def _read(url: str) -> object:
    """The budget's figures as another process sees them (a store of its own)."""
    other = RedisStore(url)
    try:
        return other.read(LIMITS)
    finally:
        other.close()


@pytest.fixture
def own_server() -> Iterator[str]:
    """A redis-server of this test's own (it is killed, reconfigured or stopped)."""
    with redis_server() as url:
        yield url


def _kill_connections_named(url: str, name: str) -> int:
    """``CLIENT KILL`` every connection of the client name ``name`` (what a server restart, a proxy or the
    server's ``timeout`` does to idle connections)."""
    with redis.Redis.from_url(url) as admin:
        killed = 0
        for client in admin.client_list():
            if client.get("name") == name:
                killed += admin.client_kill_filter(_id=client["id"])
        # The server may free a killed client after it answers (asynchronously): "closed while idle" means
        # closed, so wait until it is gone (a command racing the close itself may fail, as with redis-py).
        deadline = time.monotonic() + 5
        while any(c.get("name") == name for c in admin.client_list()) and time.monotonic() < deadline:
            time.sleep(0.005)
        return killed


# ------------------------------------------------------------------------------ connections closed by the server
def test_a_connection_the_server_closed_while_idle_does_not_fail_the_next_reserve(own_server: str) -> None:
    """The wire keeps its connections and writes to them without the check redis-py's pool makes on every
    checkout (``can_read()``: a connection the server closed is reconnected before a command is sent). A
    connection closed while idle (server restart, ``CLIENT KILL``, a proxy, the server's ``timeout``) makes
    the next command fail with "Connection closed by server": the call is refused (or, with
    on_store_error="open", goes ahead uncounted), and the settles folded into that reserve are lost (their
    holds stay until their lease, then charged at their worst case).

    Expected: the reserve succeeds and the settle made before it is charged (redis-py's own client, with
    the same zero retries, survives this). Observed: StoreError ... ConnectionError: Connection closed by
    server; spent 0, the settled call still held.
    """
    url = own_server + "?client_name=round8-kill"
    store = _fresh(url)
    store.reserve([LIMITS], _ask("h:1:1"))
    store.settle([LIMITS.name], "h:1:1", Charge(123, 1, 1, "ok"))  # waits for the next command
    assert _kill_connections_named(own_server, "round8-kill") >= 1
    store.reserve([LIMITS], _ask("h:1:2"))  # Observed: StoreError (Connection closed by server)
    figures = _read(own_server)
    assert figures.spent == 123  # type: ignore[attr-defined]
    assert figures.inflight == 1  # type: ignore[attr-defined]  # h:1:2 only: h:1:1 was settled


def test_a_servers_idle_timeout_does_not_fail_the_next_call(own_server: str) -> None:
    """The same, as it happens in production: a server (or a managed Redis) configured with ``timeout``
    closes connections idle longer than that. A process whose calls are a few seconds apart then has
    every call refused with StoreError although the server is up.

    Expected: the call after the idle time goes through. Observed: StoreError (Connection closed by server).
    """
    with redis.Redis.from_url(own_server) as admin:
        admin.config_set("timeout", 1)
    store = _fresh(own_server)
    time.sleep(2.5)  # the server closes the idle connection (its cron checks about every 100 ms)
    store.reserve([LIMITS], _ask("h:2:1"))  # Observed: StoreError


def test_a_budget_call_after_the_servers_connections_were_dropped_is_not_refused(own_server: str) -> None:
    """Through a real budget and client: a call, the server drops its connections (a failover, a restart,
    a proxy), the next call. Expected: both calls made and charged. Observed: the second call raises
    StoreError, and the first call's settle (folded into the failed reserve) is lost."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from shekel.testing import FakeInferenceServer

    url = own_server + "?client_name=round8-budget"
    with FakeInferenceServer() as server:
        client = huggingface_hub.InferenceClient(base_url=server.url)
        messages = [{"role": "user", "content": "hi there"}]
        prices = {"input": 1.0, "output": 2.0}
        with budget(name="round8-b", store=url, max_usd=5, price_per_1k_tokens=prices) as b:
            client.chat_completion(messages, model="m", max_tokens=5)
            _kill_connections_named(own_server, "round8-budget")
            client.chat_completion(messages, model="m", max_tokens=5)  # Observed: StoreError
        assert b.calls == 2 == server.request_count
        assert b.calls_in_flight == 0


# ------------------------------------------------------------------------------ threads
def test_a_read_is_not_starved_by_other_threads_making_calls(redis_store_url: str) -> None:
    """A read (and a reset, log, release, renew, flush, a budget leaving its block) first waits until no
    batch of settles is in flight (``while in_order and self._sending: self._sent.wait()``). Threads making
    calls back to back keep one in flight almost always (each reserve carries the previous call's settle),
    and the reader, woken by notify_all, finds the next one already in flight: it waits for seconds.

    Expected: 5 reads finish within 2 s (one takes under a millisecond alone). Observed: with 4 threads
    calling, the read was still waiting after 5 s (1 thread: ~1.8 s; 2 threads: ~2.8 s).
    """
    store = _fresh(redis_store_url)
    stop = threading.Event()

    def calls(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            store.reserve([LIMITS], _ask(f"h:{k}:{i}"))
            store.settle([LIMITS.name], f"h:{k}:{i}", Charge(1, 0, 0, "ok"))

    workers = [threading.Thread(target=calls, args=(k,), daemon=True) for k in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.2)
        done = threading.Event()

        def five_reads() -> None:
            for _ in range(5):
                store.read(LIMITS)
            done.set()

        reader = threading.Thread(target=five_reads, daemon=True)
        started = time.monotonic()
        reader.start()
        finished = done.wait(2.0)
        waited = time.monotonic() - started
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        reader.join(10)
        store.close()
    assert finished, f"5 reads waited {waited:.1f} s for other threads' settles"


# ------------------------------------------------------------------------------ processes
_FORKED: RedisStore | None = None


def _call_and_return() -> None:
    assert _FORKED is not None
    _FORKED.reserve([LIMITS], _ask("h:fork:1"))
    _FORKED.settle([LIMITS.name], "h:fork:1", Charge(42, 1, 1, "ok"))


def test_a_forked_worker_that_returns_right_after_a_call_has_its_settle_sent(redis_store_url: str) -> None:
    """A ``multiprocessing`` fork worker ends with ``os._exit``: no ``atexit``, so the wire's exit flush
    never runs, and its sending thread dies with the process before the settle's 5 ms are up. Before
    this change the settle was sent before ``settle`` returned.

    Expected: the parent reads the worker's call as spent (42). Observed: spent 0, the call still held at
    its worst case (until its lease ends, then charged as expired).
    """
    global _FORKED
    _FORKED = _fresh(redis_store_url)
    try:
        worker = multiprocessing.get_context("fork").Process(target=_call_and_return)
        worker.start()
        worker.join(30)
        assert worker.exitcode == 0
        figures = _read(redis_store_url)
        assert (figures.spent, figures.inflight) == (42, 0)  # type: ignore[attr-defined]
    finally:
        _FORKED.close()
        _FORKED = None


def test_a_process_that_exits_normally_sends_its_waiting_settle(redis_store_url: str, tmp_path: Path) -> None:
    """Pinned (holds): a script that settles and exits at once (returning, or via sys.exit) has its settle
    sent by the atexit flush, and the sending thread (a daemon) does not keep it alive."""
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(
        "import sys\n"
        "from shekel.ledger.shared import Ask, Charge, SharedLimits, parse_window\n"
        "from shekel.stores import open_store\n"
        "L = SharedLimits('round8', parse_window('day'), 10**12, None, None)\n"
        "s = open_store(sys.argv[1])\n"
        "s.reserve([L], Ask(sys.argv[2], 'me', 30, 5, 10, 5, 5, 2, 600.0))\n"
        "s.settle(['round8'], sys.argv[2], Charge(42, 1, 1, 'ok'))\n"
        "if sys.argv[3] == 'exit':\n"
        "    sys.exit(0)\n"
    )
    _fresh(redis_store_url).close()
    for i, how in enumerate(("return", "exit")):
        done = subprocess.run(
            [sys.executable, str(script), redis_store_url, f"h:exit:{i}", how],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    figures = _read(redis_store_url)
    assert (figures.spent, figures.inflight) == (84, 0)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ close() and the store's lifetime
def test_a_settle_made_after_close_is_still_sent_within_its_delay(redis_store_url: str) -> None:
    """``close()`` sets the wire's ``_stop`` for good, and ``defer`` starts no sending thread once it is
    set. The store is documented to reopen its connections when used again, but its settles then wait for
    the next command of the process, however long that takes (a budget that stays open, a worker between
    jobs). Expected: visible to another process within the delay (we allow 0.5 s). Observed: spent 0 and
    the call still held after 0.5 s (``waiting`` stays True)."""
    store = _fresh(redis_store_url)
    store.close()
    store.reserve([LIMITS], _ask("h:3:1"))
    store.settle([LIMITS.name], "h:3:1", Charge(7, 1, 1, "ok"))
    time.sleep(0.5)
    figures = _read(redis_store_url)
    assert (figures.spent, figures.inflight) == (7, 0)  # type: ignore[attr-defined]
    store.close()


def test_close_and_reuse_does_not_use_up_the_pools_max_connections(redis_store_url: str) -> None:
    """The wire makes its connections with ``pool.make_connection()``, which counts them against the pool's
    ``max_connections``, and never gives them back: ``close()`` drops them, the count stays. With
    ``?max_connections=2`` in the URL the third close-and-reuse fails for good.

    Expected: a store closed and used again works however often. Observed: StoreError ...
    MaxConnectionsError: Too many connections.
    """
    store = RedisStore(redis_store_url + "?max_connections=2")
    for i in range(4):
        store.reserve([LIMITS], _ask(f"h:4:{i}"))  # Observed: StoreError on i == 2
        store.release([LIMITS.name], f"h:4:{i}")
        store.close()


def test_the_stores_kept_connections_leave_room_for_its_other_commands(redis_store_url: str) -> None:
    """The same counting: the wire's kept connection takes the only one ``?max_connections=1`` allows, so
    the commands that go through the client (``names()``, ``log()``, ``describe()``: ``shekel log``,
    ``shekel report``) fail although nothing else is in use. Before this change one connection was enough.

    Expected: the log of the call. Observed: StoreError ... MaxConnectionsError: Too many connections.
    """
    store = RedisStore(redis_store_url + "?max_connections=1")
    store.reserve([LIMITS], _ask("h:5:1"))
    store.settle([LIMITS.name], "h:5:1", Charge(3, 1, 1, "ok"))
    store.flush()
    assert [entry["cost_nano"] for entry in store.log()] == [3]  # Observed: StoreError
    store.close()


def test_close_with_the_store_down_raises_a_store_error() -> None:
    """``RedisStore.close()`` sends the waiting settles, but unlike ``flush()`` lets the ``redis`` error
    through: every other store error is a ``shekel.StoreError`` naming the store. Expected: StoreError (or
    nothing: the settles' holds end with their lease). Observed: redis.exceptions.ConnectionError."""
    with redis_server() as url:
        store = _fresh(url)
    store.settle([LIMITS.name], "h:6:1", Charge(1, 1, 1, "ok"))  # the server is gone now
    with contextlib.suppress(StoreError):
        store.close()  # Observed: redis.exceptions.ConnectionError


def test_a_store_dropped_right_after_a_settle_still_sends_it(redis_store_url: str) -> None:
    """The sending thread and the atexit flush see a wire only through weak references: a store dropped
    with a settle waiting (a store made for one job, a budget object made with ``store=RedisStore(...)``
    and not used again) takes its settles with it. Expected: the settle is charged. Observed: spent 0, the
    call still held (until its lease ends, then charged at its worst case)."""
    store = _fresh(redis_store_url)
    store.reserve([LIMITS], _ask("h:7:1"))
    store.settle([LIMITS.name], "h:7:1", Charge(9, 1, 1, "ok"))
    del store  # freed at once (reference counting): within the settle's 5 ms
    time.sleep(0.2)
    figures = _read(redis_store_url)
    assert (figures.spent, figures.inflight) == (9, 0)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ pinned: these hold
def test_settles_waiting_when_the_server_forgot_its_scripts_are_each_charged_once(
    redis_store_url: str,
) -> None:
    """Pinned (holds): several settles waiting, ``SCRIPT FLUSH``, then a read: every settle runs once after
    the scripts are loaded again, and the read sees them all; the same for a reserve carrying them."""
    store = _fresh(redis_store_url)
    for i in range(5):
        store.reserve([LIMITS], _ask(f"h:8:{i}"))
    for i in range(3):
        store.settle([LIMITS.name], f"h:8:{i}", Charge(10, 1, 1, "ok"))
    store._client.script_flush()
    assert store.read(LIMITS).spent == 30
    for i in range(3, 5):
        store.settle([LIMITS.name], f"h:8:{i}", Charge(10, 1, 1, "ok"))
    store._client.script_flush()
    store.reserve([LIMITS], _ask("h:8:9"))
    figures = store.read(LIMITS)
    assert (figures.spent, figures.calls, figures.inflight) == (50, 5, 1)
    assert len(store.log(LIMITS.name)) == 5
    store.close()


@pytest.mark.parametrize(
    "options",
    [{"decode_responses": True}, {"protocol": 3}, {"protocol": 3, "decode_responses": True}],
    ids=["decode_responses", "resp3", "resp3-decoded"],
)
def test_a_users_client_of_any_protocol_and_decoding_works(redis_store_url: str, options: dict) -> None:  # type: ignore[type-arg]
    """Pinned (holds): the wire reads answers with the client's own connections and parser."""
    store = RedisStore(redis.Redis.from_url(redis_store_url, **options))
    store.reserve([LIMITS], _ask("h:9:0"))  # the budget exists before the settle
    store.release([LIMITS.name], "h:9:0")
    store.reserve([LIMITS], _ask("h:9:1"))
    store.settle([LIMITS.name], "h:9:1", Charge(11, 1, 1, "ok", model="m"))
    grant = store.reserve([LIMITS], _ask("h:9:2"))
    assert {name: f.spent for name, f in grant.figures.items()} == {LIMITS.name: 11}
    assert store.read(LIMITS).spent == 11
    assert store.names() == [LIMITS.name]
    assert [entry["model"] for entry in store.log()] == ["m"]


def test_non_ascii_names_and_models_are_packed_by_their_utf8_size(redis_store_url: str) -> None:
    """Pinned (holds): ``pack`` sizes bulk strings in bytes."""
    limits = SharedLimits("tenänt·日本", parse_window("day"), 10**12, None, None)
    store = RedisStore(redis_store_url)
    ask = _ask("h:10:1")
    ask.model = "mödel-日本"
    store.reserve([limits], ask)
    store.settle([limits.name], "h:10:1", Charge(5, 1, 1, "ok", model="mödel-日本"))
    store.reserve([limits], _ask("h:10:2"))
    assert store.read(limits).spent == 5
    assert store.log(limits.name)[0]["model"] == "mödel-日本"
    assert store.names() == [limits.name]
    store.close()


def test_thousands_of_waiting_settles_fold_into_one_reserve(redis_store_url: str) -> None:
    """Pinned (holds): 5,000 settles carried by one reserve (no Lua ``unpack`` limit is hit)."""
    store = _fresh(redis_store_url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # many threads settling at once can queue this many; queued here directly to be deterministic
        for i in range(5000):
            store._wire._pending.append(
                ("SETTLE", *store._settle_args([LIMITS.name], f"h:11:{i}", Charge(1, 0, 0, "ok"), None))
            )
        store._wire._since = time.monotonic() + 60  # the sending thread leaves them to the reserve
        store.reserve([LIMITS], _ask("h:11:x"))
    assert store.read(LIMITS).spent == 5000
    store.close()
