"""Shared budgets through the real ``InferenceClient``, across real processes, on every store: a real SQLite
file and a real redis-server (``store_url`` in conftest.py: each test runs against both).

Every process that opens the same name in the same store shares one ledger: the cap holds across them
with zero overshoot, every request that reached the server is charged once, spend survives a restart, a
rolling window frees room once it passes, a killed worker's hold ends with its lease, a slow worker that
settles after its lease is counted once, and a store that is down refuses calls (or lets them go ahead,
counted here only, with ``on_store_error="open"``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import shekel
from shekel import BudgetConfigError, BudgetExceededError, StoreError, budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens at the server
CALL_COST = Decimal("0.001") * 5 + Decimal("0.002") * 5  # max_tokens=5: $0.015 per call


def _spend_until_refused(url: str, store: str, name: str, kwargs: dict[str, Any]) -> tuple[int, str]:
    """A worker process: call until the shared budget refuses; returns (calls made, why it stopped)."""
    client = InferenceClient(base_url=url)
    made = 0
    with budget(name=name, store=store, price_per_1k_tokens=PRICES, **kwargs):
        while made < 1000:
            try:
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
            except BudgetExceededError as exc:
                return made, exc.reason
            made += 1
    return made, "never refused"


def _run_workers(
    server: FakeInferenceServer, store: str, name: str, kwargs: dict[str, Any], n: int = 6
) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(n) as pool:
        return pool.starmap(_spend_until_refused, [(server.url, store, name, kwargs)] * n)


def _shared(store: str, name: str, **kwargs: Any) -> shekel.Budget:
    return budget(name=name, store=store, price_per_1k_tokens=PRICES, **kwargs)


# ------------------------------------------------------------------------------------------ many processes
def test_six_processes_on_one_small_cap_never_pass_it_and_every_request_is_charged_once(
    server: FakeInferenceServer, store_url: str
) -> None:
    results = _run_workers(server, store_url, "eval", {"max_usd": 0.20})
    made = sum(r[0] for r in results)
    assert all(reason == "usd" for _, reason in results)
    b = _shared(store_url, "eval", max_usd=0.20)
    assert b.spent_exact <= Decimal("0.20")
    assert b.calls == made == server.request_count
    assert b.spent_exact == CALL_COST * made  # the shared spend is exactly the server's usage
    assert b.reserved == 0 and b.calls_in_flight == 0
    # Reachable: refused only when a call could not fit even if every call in flight cost nothing, so
    # less than one call's hold ($0.058: the prompt estimated high, plus max_tokens) is left unspent.
    assert b.spent_exact > Decimal("0.20") - Decimal("0.058")


def test_max_llm_calls_and_max_total_tokens_hold_across_processes(
    server: FakeInferenceServer, store_url: str
) -> None:
    results = _run_workers(server, store_url, "calls", {"max_llm_calls": 9}, n=6)
    assert sum(r[0] for r in results) == 9 == server.request_count
    assert all(reason == "calls" for _, reason in results)
    server.reset()
    results = _run_workers(server, store_url, "tokens", {"max_total_tokens": 200}, n=6)
    b = _shared(store_url, "tokens", max_total_tokens=200)
    assert b.input_tokens + b.output_tokens <= 200
    assert all(reason == "tokens" for _, reason in results)
    assert b.calls == server.request_count == sum(r[0] for r in results)


async def test_asyncio_tasks_on_a_shared_cap(server: FakeInferenceServer, store_url: str) -> None:
    import asyncio

    client = AsyncInferenceClient(base_url=server.url)

    async def work() -> bool:
        try:
            await client.chat_completion(MESSAGES, model="m", max_tokens=5)
            return True
        except BudgetExceededError:
            return False

    async with _shared(store_url, "tasks", max_usd=0.10) as b:
        done = await asyncio.gather(*(work() for _ in range(40)))
    await client.close()
    assert sum(done) == server.request_count == b.calls
    assert b.spent_exact == CALL_COST * sum(done) <= Decimal("0.10")


# ------------------------------------------------------------------------------------------ persistence
def test_spend_survives_a_restart(server: FakeInferenceServer, store_url: str) -> None:
    results = _run_workers(server, store_url, "nightly", {"max_usd": 1}, n=1)
    del results
    shekel.stores._opened.clear()  # as a new process would: nothing cached
    again = _shared(store_url, "nightly", max_usd=1)
    assert again.spent_exact == CALL_COST * server.request_count > 0
    with again:
        with pytest.raises(BudgetExceededError):
            InferenceClient(base_url=server.url).chat_completion(MESSAGES, model="m", max_tokens=5)


def test_a_rolling_window_frees_room_after_it_passes(server: FakeInferenceServer, store_url: str) -> None:
    client = InferenceClient(base_url=server.url)
    b = _shared(store_url, "rolling", max_usd=0.08, window="2s")  # two calls hold $0.058 and cost $0.015
    with b:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
        with pytest.raises(BudgetExceededError):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
        time.sleep(3.1)  # two seconds and one bucket (1 s): the window's spend is gone
        assert b.spent == 0
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert server.request_count == 3 and b.spent_exact == CALL_COST


# ------------------------------------------------------------------------------------------ leases
def _hold_then_hang(url: str, store: str, ready: Any) -> None:
    client = InferenceClient(base_url=url)
    with budget(max_usd=1, name="leased", store=store, lease=1, price_per_1k_tokens=PRICES):
        stream = client.chat_completion(MESSAGES, model="m", max_tokens=40, stream=True)
        next(iter(stream))
        ready.set()
        time.sleep(60)  # killed here, holding its reservation


def test_a_worker_killed_mid_call_holds_until_its_lease_ends_then_is_charged_what_it_held(
    server: FakeInferenceServer, store_url: str
) -> None:
    server.chunk_delay = 0.2
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    worker = context.Process(target=_hold_then_hang, args=(server.url, store_url, ready))
    worker.start()
    assert ready.wait(30)
    b = _shared(store_url, "leased", max_usd=1, lease=1)
    held = b.reserved
    assert held > 0 and b.calls_in_flight == 1
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
    worker.join()
    time.sleep(1.2)  # the lease runs out
    assert b.reserved == 0 and b.calls_in_flight == 0
    assert b.spent == held and b.failed_calls == 1  # charged what it held: the provider likely did the work
    (entry,) = [e for e in b._shared.store.log("leased") if e["expired"]]  # type: ignore[union-attr]
    assert entry["outcome"] == "unknown" and entry["cost_nano"] == int(Decimal(str(held)) * 10**9)


def test_a_slow_worker_settling_after_its_lease_is_counted_once(
    server: FakeInferenceServer, store_url: str
) -> None:
    server.latency = 1.5  # the answer comes after the lease (0.5 s) ran out
    client = InferenceClient(base_url=server.url)
    watcher = _shared(store_url, "slow", max_usd=1, lease=0.5)
    with _shared(store_url, "slow", max_usd=1, lease=0.5) as b:
        import threading

        seen: list[float] = []
        thread = threading.Thread(target=lambda: (time.sleep(1.0), seen.append(watcher.spent)))
        thread.start()
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
        thread.join()
    assert seen[0] > CALL_COST  # the expired hold was charged at the worst case meanwhile
    assert b.spent_exact == CALL_COST and b.calls == 1 and b.failed_calls == 0  # then replaced, once
    assert not [e for e in watcher._shared.store.log("slow") if e["expired"]]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ a store that is down
@pytest.fixture(params=["sqlite", "redis"])
def down_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that cannot be reached: an SQLite file where a folder is a file, a Redis port nobody listens on."""
    if request.param == "redis":
        pytest.importorskip("redis")
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"redis://:s3cretPASS@127.0.0.1:{port}/0"  # closed once the socket is
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    return f"sqlite:///{blocker / 'budgets.db'}"


def test_a_store_that_is_down_refuses_calls_before_sending(
    server: FakeInferenceServer, down_url: str
) -> None:
    client = InferenceClient(base_url=server.url)
    with _shared(down_url, "down", max_usd=1):
        with pytest.raises(StoreError, match=r"could not reserve a call.*on_store_error='open'") as caught:
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert server.request_count == 0
    assert "s3cretPASS" not in str(caught.value)


def test_a_store_that_is_down_with_on_store_error_open_lets_calls_go_counted_here(
    server: FakeInferenceServer, down_url: str
) -> None:
    client = InferenceClient(base_url=server.url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _shared(down_url, "down", max_usd=1, on_store_error="open") as b:
            for _ in range(3):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert server.request_count == 3
    assert b._account.calls == 3 and b._own_spent == CALL_COST * 3  # counted in this process
    assert len([w for w in caught if "cannot be used" in str(w.message)]) == 1  # one warning per budget


def test_a_reset_by_another_process_gives_the_room_back_to_every_process(
    server: FakeInferenceServer, store_url: str
) -> None:
    """This process's own share is not a limit of its own: once another process (here another store object,
    as `shekel reset` would be) clears the budget, this one can spend the whole cap again."""
    from shekel.stores import open_store

    client = InferenceClient(base_url=server.url)
    b = _shared(store_url, "daily", max_usd=0.1)  # a call holds $0.058: the fourth does not fit
    with b:
        for _ in range(3):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
        with pytest.raises(BudgetExceededError):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
        open_store(store_url).reset("daily")
        for _ in range(3):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
        assert b.spent_exact == CALL_COST * 3 and b.calls == 3


def test_a_password_in_a_store_url_never_shows() -> None:
    from shekel.ledger.shared import display_url

    assert display_url("redis://user:s3cretPASS@host:6379/0") == "redis://***@host:6379/0"


# ------------------------------------------------------------------------------------------ nesting
def test_a_local_budget_inside_a_shared_one_and_a_shared_one_inside_a_local_one(
    server: FakeInferenceServer, store_url: str
) -> None:
    client = InferenceClient(base_url=server.url)
    with _shared(store_url, "outer-shared", max_usd=0.08) as outer:
        with budget(max_usd=1, name="local") as inner:
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
            with pytest.raises(BudgetExceededError, match="outer-shared"):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert inner.spent_exact == outer.spent_exact == CALL_COST * 2
    with budget(max_usd=0.07, name="local-outer", price_per_1k_tokens=PRICES) as local:
        with _shared(store_url, "inner-shared", max_usd=1) as shared:
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
            with pytest.raises(BudgetExceededError, match="local-outer"):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert local.spent_exact == shared.spent_exact == CALL_COST
    assert shared.reserved == 0  # the refused call's hold in the store was given back


# ------------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"store": "ftp://x/y", "name": "a"}, "scheme"),
        ({"store": "sqlite:///b.db"}, "needs a name"),
        ({"store": "sqlite:///b.db", "name": "a", "window": -5}, "window"),
        ({"store": "sqlite:///b.db", "name": "a", "window": "fortnight"}, "window"),
        ({"store": "sqlite:///b.db", "name": "a", "window": "0s"}, "window"),
        ({"store": "sqlite:///b.db", "name": "a", "lease": 0}, "lease"),
        ({"store": "sqlite:///b.db", "name": "a", "lease": -1}, "lease"),
        ({"store": "sqlite:///b.db", "name": "a", "on_store_error": "maybe"}, "on_store_error"),
        ({"window": "1d"}, "store"),
        ({"store": "env", "name": "a"}, "SHEKEL_STORE"),
        ({"store": "sqlite:///b.db", "name": "a", "max_usd": 10_000_000}, "exactly"),
    ],
)
def test_bad_shared_budget_arguments_fail_at_budget_time(
    kwargs: dict[str, Any], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHEKEL_STORE", raising=False)
    with pytest.raises(BudgetConfigError, match=needle):
        budget(**kwargs)


def test_store_env_reads_shekel_store(monkeypatch: pytest.MonkeyPatch, store_url: str) -> None:
    monkeypatch.setenv("SHEKEL_STORE", store_url)
    b = budget(max_usd=1, name="from-env", store="env")
    assert b._shared is not None and b._shared.store is shekel.stores.open_store(store_url)


def test_two_processes_with_different_windows_for_one_name_are_told(
    server: FakeInferenceServer, store_url: str
) -> None:
    client = InferenceClient(base_url=server.url)
    with _shared(store_url, "tenant", max_usd=1, window="day"):
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
    with _shared(store_url, "tenant", max_usd=1, window="1h"):
        with pytest.raises(BudgetConfigError, match="same window"):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)


def test_reset_clears_the_shared_spend(server: FakeInferenceServer, store_url: str) -> None:
    client = InferenceClient(base_url=server.url)
    with _shared(store_url, "resettable", max_usd=1) as b:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert b.spent_exact == CALL_COST
    b.reset()
    assert b.spent == 0 and b.calls == 0 and _shared(store_url, "resettable", max_usd=1).spent == 0


async def test_an_async_call_is_in_the_shared_figures_when_its_await_returns(
    server: FakeInferenceServer, store_url: str
) -> None:
    client = AsyncInferenceClient(base_url=server.url)
    async with _shared(store_url, "awaited", max_usd=1) as b:
        await client.chat_completion(MESSAGES, model="m", max_tokens=5)
        assert b.spent_exact == CALL_COST and b.calls == 1
        stream = await client.chat_completion(MESSAGES, model="m", max_tokens=5, stream=True)
        async for _ in stream:
            pass
        assert b.spent_exact == 2 * CALL_COST and b.calls == 2 and b.reserved == 0
    await client.close()


def test_one_name_opened_inside_itself_is_one_ledger_held_to_the_tighter_limits(
    server: FakeInferenceServer, store_url: str
) -> None:
    client = InferenceClient(base_url=server.url)
    with _shared(store_url, "tenant", max_usd=1) as outer:
        with _shared(store_url, "tenant", max_usd=1, max_llm_calls=2) as inner:
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
            with pytest.raises(BudgetExceededError):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
            assert inner.calls == 2
        client.chat_completion(MESSAGES, model="m", max_tokens=5)  # the outer one alone has no call limit
        assert outer.spent_exact == CALL_COST * 3 and outer.calls == 3
    with _shared(store_url, "tenant", max_usd=1), _shared(store_url, "tenant", max_usd=1, window="1h"):
        with pytest.raises(BudgetConfigError, match="different windows"):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert server.request_count == 3
