"""The Redis store's one round trip per call: a settle goes with the next reserve (in the same script run),
or alone within a few milliseconds, and is never lost, sent twice, or overtaken by a read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from shekel.ledger.shared import Ask, Charge, SharedLimits, parse_window

redis = pytest.importorskip("redis")
from shekel.ledger import _redis_wire  # noqa: E402
from shekel.stores import RedisStore  # noqa: E402

LIMITS = SharedLimits("wire", parse_window(None), 10**12, None, None)


@pytest.fixture(autouse=True)
def _restore_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redis_wire, "SETTLE_DELAY", _redis_wire.SETTLE_DELAY)


ROOT = Path(__file__).resolve().parents[2]


def _ask(hold_id: str) -> Ask:
    return Ask(hold_id, "me", 30, 5, 10, 5, 5, 2, 600.0)


def _evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_settle_runs_in_the_same_script_as_the_next_reserve(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    other = RedisStore(redis_store_url)
    client = redis.Redis.from_url(redis_store_url)
    first = store.reserve([LIMITS], _ask("h:1:1"))
    client.config_resetstat()
    store.settle([LIMITS.name], "h:1:1", Charge(50, 1, 1, "ok"))
    second = store.reserve([LIMITS], _ask("h:1:2"))
    assert _evalsha_calls(client) == 1  # one script run for the settle and the reserve
    assert second.figures[LIMITS.name].spent == 50  # the reserve saw the settle made before it
    figures = other.read(LIMITS)
    assert (figures.spent, figures.calls, figures.inflight, figures.reserved) == (50, 1, 1, second.money)
    assert first.money > 50  # the settle replaced the worst case it held
    client.close()


def test_a_settle_nothing_carries_is_sent_within_milliseconds(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    other = RedisStore(redis_store_url)
    grant = store.reserve([LIMITS], _ask("h:1:1"))
    store.settle([LIMITS.name], "h:1:1", Charge(50, 1, 1, "ok"))
    assert store.waiting
    deadline = time.monotonic() + 5
    while other.read(LIMITS).calls == 0:  # another process's view: only the sending thread can carry it
        assert time.monotonic() < deadline, "the settle was never sent"
        time.sleep(0.001)
    figures = other.read(LIMITS)
    assert (figures.spent, figures.inflight, figures.reserved) == (50, 0, 0)
    assert grant.money > 50
    assert not store.waiting


def test_reads_resets_and_logs_come_after_the_settles_made_before_them(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    for i in range(3):
        store.reserve([LIMITS], _ask(f"h:1:{i}"))
        store.settle([LIMITS.name], f"h:1:{i}", Charge(10, 1, 1, "ok"))
    assert store.read(LIMITS).spent == 30
    store.reserve([LIMITS], _ask("h:1:9"))
    store.settle([LIMITS.name], "h:1:9", Charge(7, 1, 1, "ok"))
    assert len(store.log(LIMITS.name)) == 4
    store.reserve([LIMITS], _ask("h:1:10"))
    store.settle([LIMITS.name], "h:1:10", Charge(5, 1, 1, "ok"))
    store.reset(LIMITS.name)  # the settle before the reset is cleared with it, not charged after it
    assert store.read(LIMITS).spent == 0


def test_settles_waiting_when_the_server_forgot_its_scripts_run_before_the_read(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    client = redis.Redis.from_url(redis_store_url)
    for i in range(3):
        store.reserve([LIMITS], _ask(f"h:1:{i}"))
    _redis_wire.SETTLE_DELAY = 600.0  # no sending thread in time: the settles wait for the read
    for i in range(3):
        store.settle([LIMITS.name], f"h:1:{i}", Charge(10, 1, 1, "ok"))
    client.script_flush()
    figures = store.read(LIMITS)
    assert (figures.spent, figures.calls, figures.inflight) == (30, 3, 0)
    client.script_flush()
    store.reserve([LIMITS], _ask("h:1:3"))
    store.settle([LIMITS.name], "h:1:3", Charge(10, 1, 1, "ok"))
    store.reserve([LIMITS], _ask("h:1:4"))  # the folded script, unknown again: loaded and run once
    assert store.read(LIMITS).spent == 40
    client.close()


def test_many_threads_lose_and_double_no_settle(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(150):
                hold_id = f"h:{thread}:{i}"
                store.reserve([LIMITS], _ask(hold_id))
                store.settle([LIMITS.name], hold_id, Charge(3, 1, 1, "ok"))
                if i % 50 == 0:
                    store.read(LIMITS)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    figures = store.read(LIMITS)
    assert (figures.spent, figures.calls, figures.inflight, figures.reserved) == (3 * 1200, 1200, 0, 0)


def test_a_budget_leaving_its_block_sends_its_settles(redis_store_url: str) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from shekel import budget
    from shekel.testing import FakeInferenceServer

    store = RedisStore(redis_store_url)
    _redis_wire.SETTLE_DELAY = 600.0  # no sending thread in time: only the budget's exit can send it
    with FakeInferenceServer() as server:
        client = huggingface_hub.InferenceClient(base_url=server.url)
        with budget(max_usd=1, name="wire", store=store, price_per_1k_tokens={"input": 1, "output": 2}):
            client.chat_completion([{"role": "user", "content": "hi"}], model="m", max_tokens=5)
            assert store.waiting
        assert not store.waiting
    figures = RedisStore(redis_store_url).read(LIMITS)
    assert (figures.calls, figures.inflight) == (1, 0)
    assert figures.spent > 0


async def test_an_async_budget_leaving_its_block_sends_sync_settles_off_the_loop(
    redis_store_url: str,
) -> None:
    from shekel import budget

    store = RedisStore(redis_store_url)
    _redis_wire.SETTLE_DELAY = 600.0
    async with budget(max_usd=1, name="wire", store=store):
        store.reserve([LIMITS], _ask("h:1:1"))  # a sync call's settle, inside async code
        store.settle([LIMITS.name], "h:1:1", Charge(10, 1, 1, "ok"))
    assert not store.waiting
    assert RedisStore(redis_store_url).read(LIMITS).spent == 10


def test_a_process_that_exits_sends_its_settles(redis_store_url: str) -> None:
    code = (
        "from shekel.stores import RedisStore\n"
        "from shekel.ledger.shared import Ask, Charge, SharedLimits, parse_window\n"
        f"limits = SharedLimits('wire', parse_window(None), 10**12, None, None)\n"
        f"store = RedisStore({redis_store_url!r})\n"
        "from shekel.ledger import _redis_wire\n"
        "_redis_wire.SETTLE_DELAY = 600.0\n"  # no sending thread in time: only the exit can send it
        "store.reserve([limits], Ask('h:2:1', 'me', 30, 5, 10, 5, 5, 2, 600.0))\n"
        "store.settle(['wire'], 'h:2:1', Charge(42, 1, 1, 'ok'))\n"
        "assert store.waiting\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    figures = RedisStore(redis_store_url).read(LIMITS)
    assert (figures.spent, figures.calls, figures.inflight) == (42, 1, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_never_sends_its_parents_settles(redis_store_url: str) -> None:
    store = RedisStore(redis_store_url)
    store.reserve([LIMITS], _ask("h:1:1"))
    _redis_wire.SETTLE_DELAY = 600.0
    store.settle([LIMITS.name], "h:1:1", Charge(10, 1, 1, "ok"))
    pid = os.fork()
    if pid == 0:  # the child: its own wire, empty; its reads and exit send nothing of the parent's
        code = 1
        try:
            code = 0 if not store.waiting and store.read(LIMITS).calls == 0 else 2
            store.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    figures = store.read(LIMITS)  # the parent's read carries it: charged once
    assert (figures.spent, figures.calls) == (10, 1)


def test_a_connection_killed_under_the_store_is_replaced(redis_store_url: str) -> None:
    from shekel import StoreError

    store = RedisStore(redis_store_url)
    client = redis.Redis.from_url(redis_store_url)
    store.read(LIMITS)
    client.client_kill_filter(_type="normal", skipme=True)
    try:
        store.read(LIMITS)
    except StoreError as error:  # the write may land on the dead socket: the answer is lost, said clearly
        assert "Redis" in str(error) or "redis" in str(error)
    assert store.read(LIMITS).spent == 0  # and the next command reconnects
    client.close()


def test_pack_sizes_non_ascii_in_bytes() -> None:
    connection = redis.Connection()
    for args in (["EVALSHA", "abc", 1, "shekel:{tenant:ü}:", "0.0", 100000, "x|y", ""], ["PING"]):
        assert _redis_wire.pack(*args) == b"".join(connection.pack_command(*args))


def _forked_worker(url: str) -> int:
    """A fork-pool worker: its settle is sent as it is made (no budget exit, no sending thread in time, and
    the pool may SIGTERM it as soon as the task returns), not left waiting for a later command."""
    _redis_wire.SETTLE_DELAY = 600.0
    store = RedisStore(url)
    store.reserve([LIMITS], _ask(f"h:{os.getpid()}:1"))
    store.settle([LIMITS.name], f"h:{os.getpid()}:1", Charge(10, 1, 1, "ok"))
    return 1 if store.waiting else 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_fork_pool_worker_sends_each_settle_as_its_call_ends(redis_store_url: str) -> None:
    import multiprocessing

    RedisStore(redis_store_url)  # a wire in the parent: its children's wires are made at fork
    with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
        waiting = pool.map(_forked_worker, [redis_store_url] * 2)
        pool.close()
        pool.join()
    assert waiting == [0, 0]
    figures = RedisStore(redis_store_url).read(LIMITS)
    assert (figures.spent, figures.calls, figures.inflight) == (20, 2, 0)


def test_settles_wait_while_the_server_is_down_and_are_sent_when_it_is_back() -> None:
    """Nothing of a settle was written while the server could not be reached: it waits (the sending thread
    tries again, less often), and is charged once the server is back."""
    from tests._redis_server import free_port, start_server, stop_server

    port = free_port()
    folder = tempfile.mkdtemp(prefix="shekel-redis-")  # short: the server's unix socket lives in it

    def start() -> subprocess.Popen[bytes]:
        process = start_server(port, folder)
        assert process is not None, f"port {port} was taken"
        return process

    url = f"redis://127.0.0.1:{port}/0"
    server = start()
    try:
        store = RedisStore(url)
        store.reserve([LIMITS], _ask("h:1:1"))
        server.terminate()
        server.wait(10)
        store.settle([LIMITS.name], "h:1:1", Charge(50, 1, 1, "ok"))
        time.sleep(0.3)  # the sending thread tried, and could not connect
        assert store.waiting
        server = start()  # a new, empty server (no persistence): the settle lands in it, once
        deadline = time.monotonic() + 10
        while store.waiting:
            assert time.monotonic() < deadline, "the settle was not sent once the server was back"
            time.sleep(0.01)
        figures = RedisStore(url).read(LIMITS)
        assert (figures.spent, figures.calls) == (50, 1)
    finally:
        stop_server(server)
        shutil.rmtree(folder, ignore_errors=True)
