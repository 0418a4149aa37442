"""Review round 13 (a): shared budgets (issue 9), on main 1520cb7 (round 12's fixes: Store.ledger_key).

Each test is marked xfail(strict=True) while the defect it shows is there: it fails because of the defect,
and passes once it is fixed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shekel import BudgetExceededError, budget
from shekel.ledger.shared import SharedLimits, parse_window
from shekel.stores import SQLiteStore
from shekel.testing import FakeInferenceServer

from .._redis_server import binary, free_port, redis_server

huggingface_hub = pytest.importorskip("huggingface_hub")

HI = [{"role": "user", "content": "hi there"}]


# ------------------------------------------------------------------------ Sentinel clients
@contextmanager
def _sentinel(services: dict[str, str]) -> Iterator[int]:
    """A real Redis Sentinel (``redis-server --sentinel``) monitoring ``services`` (name -> server URL)."""
    import redis
    from redis.sentinel import Sentinel

    exe = binary()
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="shekel-sentinel-") as folder:
        conf = Path(folder) / "sentinel.conf"
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {folder}"]
        for name, url in services.items():
            host_port = url.split("://", 1)[1].split("/", 1)[0]
            host, _, server_port = host_port.partition(":")
            lines.append(f"sentinel monitor {name} {host} {server_port} 1")
        conf.write_text("\n".join(lines) + "\n")
        process = subprocess.Popen(
            [exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=1)
            for _ in range(200):
                try:
                    for name in services:
                        sentinel.discover_master(name)
                    break
                except (redis.RedisError, OSError):
                    time.sleep(0.02)
            else:
                pytest.fail("redis sentinel did not answer within 4 s")
            yield port
        finally:
            process.terminate()
            process.wait(10)


def test_budgets_in_two_sentinel_services_are_kept_in_their_own_servers(
    server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    """docs/shared-budgets.md: "Or a client you configured yourself (pools, TLS certificates, Sentinel...):
    the same ledger", and a chain may hold "shared budgets in two stores". A fleet budget "fleet" ($1) lives
    in the Redis deployment of Sentinel service "a"; a job budget "job" ($10) inside it lives in service "b"
    (another server); both stores are RedisStore(sentinel.master_for(...)) as the docs show. A Sentinel
    master client's connection pool has no host or port in its connection_kwargs, so RedisStore takes
    ("redis", "tcp", "localhost", 6379, 0) as the ledger_key of both (and displays both as
    redis://localhost:6379/0). sharing.groups() then takes them for one ledger: the chain's two budgets are
    held and charged in one step, through the innermost store object, in server "b". Observed: 3 calls
    sent, server "a" holds no key at all; the fleet budget reads $0 spent and 0 calls there, so every other
    process on "a" sees the fleet cap untouched, and the fleet's $1 is not enforced against these calls."""
    redis = pytest.importorskip("redis")
    from redis.sentinel import Sentinel

    from shekel.stores import RedisStore

    with redis_server() as url_a, redis_server() as url_b, _sentinel({"a": url_a, "b": url_b}) as port:
        sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=2)
        store_a = RedisStore(sentinel.master_for("a", socket_timeout=5))
        store_b = RedisStore(sentinel.master_for("b", socket_timeout=5))
        client = huggingface_hub.InferenceClient(base_url=server.url)
        with budget(max_usd=1, name="fleet", store=store_a, price_per_1k_tokens=prices) as fleet:
            with budget(max_usd=10, name="job", store=store_b, price_per_1k_tokens=prices) as job:
                for _ in range(3):
                    client.chat_completion(HI, model="m", max_tokens=5)
        spent = job.spent_exact
        fleet_calls = fleet.calls
        with redis.Redis.from_url(url_a) as direct:
            keys_in_a = direct.keys("shekel:*")
        seen_in_a = budget(max_usd=1, name="fleet", store=url_a, price_per_1k_tokens=prices)
        seen_calls, seen_spent = seen_in_a.calls, seen_in_a.spent_exact
        for store in (store_a, store_b):
            store.close()
    assert server.request_count == 3
    assert keys_in_a, "nothing was written to server 'a'"  # observed: no key
    assert fleet_calls == 3  # observed: 0
    assert (seen_calls, seen_spent) == (3, spent)  # observed: (0, 0)


# ------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("inner_store", ["another file", "another object of the same file"])
def test_a_refusal_names_the_budget_and_store_that_refused(
    tmp_path: Path, server: FakeInferenceServer, prices: dict[str, float], inner_store: str
) -> None:
    """A chain holds two shared budgets of one name: the outer "t" ($0.05) in a.db, the inner "t" ($100)
    in b.db (two ledgers), or in a.db again through another store object (one ledger, "held to the tighter
    of the two budgets' limits"). The outer's $0.05 refuses a call. Budget._refused_shared picks the budget
    to blame as the first of the chain (innermost) with the refused name, whatever store refused or whose
    limit it was. Observed: BudgetExceededError "budget 't/t (shared, in sqlite:///.../b.db)' cannot pay
    for the next call: spent $0.00 of $100.00, $100.00 left, and the call could cost up to $0.055 ($0.00
    over the cap)", with e.limit == 100: the wrong store (first case), the wrong limit and a refusal that
    reads as nonsense, for a handler or an operator who acts on it."""
    outer_url = f"sqlite:///{tmp_path / 'a.db'}"
    inner = (
        f"sqlite:///{tmp_path / 'b.db'}" if inner_store == "another file" else SQLiteStore(tmp_path / "a.db")
    )
    client = huggingface_hub.InferenceClient(base_url=server.url)
    with budget(max_usd=0.05, name="t", store=outer_url, price_per_1k_tokens=prices):
        with budget(max_usd=100, name="t", store=inner, price_per_1k_tokens=prices):
            with pytest.raises(BudgetExceededError) as refused:
                for _ in range(100):
                    client.chat_completion(HI, model="m", max_tokens=5)
    error = refused.value
    assert error.limit == pytest.approx(0.05)  # observed: 100.0
    if inner_store == "another file":
        assert "a.db" in str(error), str(error)  # observed: names b.db


# ------------------------------------------------------------------------ fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_can_read_a_redis_budget_while_a_parent_thread_reads_one(redis_store_url: str) -> None:
    """The Redis store is documented as fork-aware ("A forked process (a multiprocessing pool's worker made
    by fork, a prefork server's worker) sends each settle as its call ends"; _redis_wire resets its
    per-process state in the child). Round 12 added a module lock, _stores_lock, taken by every
    RedisStore() and by every read, reset and log (_every_store, to send aliases' settles), and nothing
    resets it after a fork. A process where a thread reads shared figures (a monitor polling b.spent, here
    of a store that is down, so it polls fast) forks workers; a fork that lands while that thread is inside
    _every_store() leaves the lock held forever in the child. Observed: the child's first read of a budget
    (b.spent, a reset, a log: here store.read) blocks forever in _every_store (faulthandler shows
    redis.py _every_store <- _send_aliases <- read); within a few dozen forks one child hangs."""
    from shekel.stores import RedisStore

    tenants = [RedisStore(redis_store_url) for _ in range(64)]  # a store object per tenant
    down = RedisStore("redis://127.0.0.1:1/0")
    limits = SharedLimits("x", parse_window(None), 10**9, None, None)
    stop = threading.Event()

    def monitor() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # the store is down: the monitor keeps polling
                down.read(limits)

    thread = threading.Thread(target=monitor, daemon=True)
    switch = sys.getswitchinterval()
    hung = 0
    forks = 0
    thread.start()
    sys.setswitchinterval(1e-6)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 20 and not hung:
            forks += 1
            pid = os.fork()
            if pid == 0:  # the child: one read of a live store, then out
                try:
                    tenants[1].read(limits)
                finally:
                    os._exit(0)
            deadline = time.monotonic() + 5
            while True:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    hung += 1
                    break
                time.sleep(0.005)
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        thread.join(5)
        for store in tenants:
            store.close()
    assert hung == 0, f"a forked child hung reading the store (after {forks} forks)"
