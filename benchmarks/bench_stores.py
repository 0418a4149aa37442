"""8. Shared stores: reserve+settle pairs per second from 1, 4 and 8 processes, SQLite and Redis, against the
in-process ledger measured in the same run; and zero overshoot from 8 processes on a small cap.

Every process reserves a call on one shared budget far from its cap and settles it, in a loop, for a fixed
time; the figure is the pairs all processes made per second of wall-clock time. The in-process baseline is
the same pair on the in-memory ledger (what a budget without ``store=`` does), one ledger per process.
Redis runs on a ``redis-server`` this benchmark starts on a free loopback port, without persistence.

Standalone: ``python -m benchmarks.bench_stores [--quick]``.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from ._harness import Row

PROCESSES = (1, 4, 8)
SECONDS = 3.0
#: Runs per store and process count; the figure is their median (this shared VM's speed drifts by 20%).
RUNS = 3
#: Targets from issue 9, from 8 processes on this 2-core machine.
TARGETS = {"redis": 5000.0, "sqlite": 1000.0}
OVERSHOOT_CAP = 5_000_000  # nano-dollars: $0.005, a few hundred calls
#: Calls in flight (held by another process) during the "crowded" runs: a reserve must not slow down with them.
CROWD = 1000


def _limits(cap: int) -> Any:
    from shekel.ledger.shared import SharedLimits, parse_window

    return SharedLimits("bench", parse_window(None), cap, None, None)


def _pairs(kind: str, spec: str, seconds: float, crowd: int, start: Any, t0: Any, queue: Any) -> None:
    """One process: reserve+settle pairs from ``t0`` (set with ``start``) for ``seconds``; puts the count.
    ``crowd``: holds of calls in flight (of another owner) taken on the budget first, and left open."""
    from shekel.ledger.shared import Ask, Charge

    done = 0
    if kind == "memory":
        import shekel
        from shekel.ledger import memory

        account = shekel.budget(max_usd=10**6)._account
        lock = threading.Lock()
        queue.put("ready")
        start.wait()
        time.sleep(max(0.0, t0.value - time.time()))
        stop = t0.value + seconds
        while time.time() < stop:
            with lock:
                _, held, tokens = memory.hold([account], Decimal("3e-6"), Decimal("5e-9"), 10, 100, 100, True)
            with lock:
                memory.settle([account], held, tokens, Decimal("2e-6"), 10, 50, "ok")
            done += 1
        queue.put(done)
        return
    from shekel.stores import open_store

    store = open_store(spec)
    limits = [_limits(10**15)]
    store.read(limits[0])  # connect before the clock starts
    pid = os.getpid()
    for i in range(crowd):
        store.reserve(limits, Ask(f"crowd:{pid}:{i}", "crowd", 3000, 5, 10, 100, 100, 2, 600.0))
    queue.put("ready")
    start.wait()
    time.sleep(max(0.0, t0.value - time.time()))
    stop = t0.value + seconds
    while time.time() < stop:
        hold_id = f"bench:{pid}:{done}"
        grant = store.reserve(limits, Ask(hold_id, f"bench:{pid}", 3000, 5, 10, 100, 100, 2, 600.0))
        store.settle(["bench"], hold_id, Charge(grant.money // 2, 10, 50, "ok"), ["none"])
        done += 1
    queue.put(done)


def _spend(spec: str, seed: int, queue: Any) -> None:
    """One process: spend on a small shared cap until it refuses for good; puts the money charged."""
    from shekel.ledger.shared import Ask, Charge, StoreNoRoom
    from shekel.stores import open_store

    store = open_store(spec)
    limits = [_limits(OVERSHOOT_CAP)]
    charged = i = 0
    while True:
        i += 1
        hold_id = f"spend:{seed}:{i}"
        try:
            grant = store.reserve(limits, Ask(hold_id, f"spend:{seed}", 3000, 5, 10, None, 4000, 2, 600.0))
        except StoreNoRoom as refused:
            if not refused.waitable:
                break
            time.sleep(0.0005)
            continue
        store.settle(
            ["bench"], hold_id, Charge(grant.money, 10, 50, "ok"), ["none"]
        )  # the worst case, always
        charged += grant.money
    queue.put(charged)


def _run(target: Any, args_per_process: list[tuple[Any, ...]]) -> list[Any]:
    """Start every process, let them all begin at one moment (once each is ready), and collect their results."""
    context = multiprocessing.get_context("spawn")
    start, queue, t0 = context.Event(), context.Queue(), context.Value("d", 0.0)
    processes = [context.Process(target=target, args=(*args, start, t0, queue)) for args in args_per_process]
    for p in processes:
        p.start()
    for _ in processes:
        assert queue.get(timeout=120) == "ready"
    t0.value = time.time() + 0.2
    start.set()
    results = [queue.get(timeout=120) for _ in processes]
    for p in processes:
        p.join()
    return results


def _spend_run(spec: str, n: int) -> list[int]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_spend, args=(spec, seed, queue)) for seed in range(n)]
    for p in processes:
        p.start()
    results = [queue.get(timeout=300) for _ in processes]
    for p in processes:
        p.join()
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _redis_server() -> Iterator[str | None]:
    exe = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    try:
        import redis
    except ImportError:
        exe = None
    if exe is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="shekel-bench-redis-") as folder:
        port = _free_port()
        args = [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            folder,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def _flush(spec: str) -> None:
    if spec.startswith("redis"):
        import redis

        with redis.Redis.from_url(spec) as client:
            client.flushdb()
            client.config_resetstat()
    else:
        Path(spec[len("sqlite:///") :]).unlink(missing_ok=True)


def _script_us(spec: str) -> float:
    """Microseconds the server spent running scripts since the last flush."""
    import redis

    with redis.Redis.from_url(spec) as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0.0))


def measure(quick: bool = False) -> dict[str, Any]:
    """Pairs per second per store and process count, and the overshoot runs: a dict of figures."""
    seconds = 1.0 if quick else SECONDS
    figures: dict[str, Any] = {"pairs": {}, "spread": {}, "overshoot": {}, "server_us": {}, "crowded": {}}
    with tempfile.TemporaryDirectory(prefix="shekel-bench-sqlite-") as folder, _redis_server() as redis_url:
        stores = {"memory": "", "sqlite": f"sqlite:///{folder}/b.db"}
        if redis_url is not None:
            stores["redis"] = redis_url
        for kind, spec in stores.items():
            for n in PROCESSES:
                rates, server = [], []
                for _ in range(1 if quick else RUNS):
                    if spec:
                        _flush(spec)
                    counts = _run(_pairs, [(kind, spec, seconds, 0)] * n)
                    rates.append(sum(counts) / seconds)
                    if kind == "redis":  # the server's own script time per pair, whatever the clients' load
                        server.append(_script_us(spec) / max(1, sum(counts)))
                figures["pairs"][(kind, n)] = statistics.median(rates)
                figures["spread"][(kind, n)] = (min(rates), max(rates))
                if server:
                    figures["server_us"][n] = statistics.median(server)
                print(
                    f"  {kind:6} x{n}: {figures['pairs'][(kind, n)]:,.0f} pairs/s "
                    f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})",
                    file=sys.stderr,
                    flush=True,
                )
            if spec:
                crowded = []
                for _ in range(1 if quick else RUNS):
                    _flush(spec)
                    crowded.append(_run(_pairs, [(kind, spec, seconds, CROWD)])[0] / seconds)
                figures["crowded"][kind] = statistics.median(crowded)
                print(
                    f"  {kind:6} x1, {CROWD:,} calls in flight: {figures['crowded'][kind]:,.0f} pairs/s",
                    file=sys.stderr,
                    flush=True,
                )
                _flush(spec)
                charged = _spend_run(spec, 8)
                from shekel.stores import open_store

                spent = open_store(spec).read(_limits(OVERSHOOT_CAP)).spent
                figures["overshoot"][kind] = (sum(charged), spent, max(0, spent - OVERSHOOT_CAP))
    return figures


def run(quick: bool = False) -> list[Row]:
    figures = measure(quick)
    rows = []
    memory = figures["pairs"]
    for (kind, n), rate in sorted(memory.items()):
        if kind == "memory":
            continue
        base = memory[("memory", n)]
        low, high = figures["spread"][(kind, n)]
        target = TARGETS.get(kind) if n == 8 else None
        rows.append(
            Row(
                "stores",
                f"{kind} reserve+settle pairs/s, {n} process{'es' if n > 1 else ''}",
                f"in-process ledger, {n} process{'es' if n > 1 else ''}",
                time_text=f"{rate:,.0f}/s (median of {RUNS}; {low:,.0f} to {high:,.0f}) vs {base:,.0f}/s; "
                f"ratio {rate / base:.4f}; {1e6 / rate * n:,.0f} us/pair",
                target="" if target is None else f">= {target:,.0f} pairs/s",
                ok=None if target is None else rate >= target,
            )
        )
    for kind, rate in figures["crowded"].items():
        alone = memory[(kind, 1)]
        rows.append(
            Row(
                "stores",
                f"{kind} reserve+settle pairs/s, 1 process, {CROWD:,} calls of others in flight",
                f"{kind}, 1 process, none in flight",
                time_text=f"{rate:,.0f}/s vs {alone:,.0f}/s; ratio {rate / alone:.2f} (a reserve reads running "
                "totals of the holds, not each hold)"
                if kind == "redis"
                else f"{rate:,.0f}/s vs {alone:,.0f}/s; ratio {rate / alone:.2f}",
            )
        )
    for n, us in sorted(figures["server_us"].items()):
        rows.append(
            Row(
                "stores",
                f"redis-server script time per pair, {n} process{'es' if n > 1 else ''}",
                "",
                time_text=f"{us:.1f} us per reserve+settle (one script run: a settle goes with the next "
                f"reserve): the server's scripts alone could run {1e6 / us:,.0f} pairs/s"
                if us
                else "",
            )
        )
    for kind, (charged, spent, over) in figures["overshoot"].items():
        rows.append(
            Row(
                "stores",
                f"{kind}: 8 processes spending a ${OVERSHOOT_CAP / 1e9:g} cap",
                "the cap",
                time_text=f"spent {spent:,} of {OVERSHOOT_CAP:,} nano-$ ({spent / OVERSHOOT_CAP:.1%}); "
                f"charged by the workers {charged:,}",
                target="overshoot 0",
                ok=over == 0 and charged == spent,
            )
        )
    return rows


def main() -> int:
    from .run import render

    rows = run(quick="--quick" in sys.argv)
    print(render(rows))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        __package__ = "benchmarks"
    sys.exit(main())
