"""9. Against the older PyPI ``shekel`` 1.2.0 (an unrelated package with the same import name), on one Redis.

Its ``RedisBackend.check_and_add`` adds a call's cost *after* the call, and refuses when the cost would pass
the cap: by then the call was made and paid for. N workers therefore overshoot by up to N calls. This
benchmark runs N processes spending $0.01 calls (each "call" takes ``LATENCY`` seconds, as over a network)
on a $1.00 cap, once with shekel 1.2.0's backend and once with this shekel's ``RedisStore`` (reserve before,
settle after), and prints what was really spent; also each one's operations per second from 8 processes.

shekel 1.2.0 must live in a virtualenv of its own, never beside this package::

    python3 -m venv /tmp/old-shekel && /tmp/old-shekel/bin/pip install shekel==1.2.0 redis
    python -m benchmarks.bench_old_shekel /tmp/old-shekel/bin/python
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .bench_stores import _redis_server

CAP_USD = 1.00
CALL_USD = 0.01
LATENCY = 0.02
WORKERS = (1, 4, 8)
CALL_NANO = 10_000_000
#: The old interpreter runs isolated (-I) in an empty folder: nothing of this checkout on its path.
_EMPTY = tempfile.mkdtemp(prefix="shekel-old-")

#: Run by shekel 1.2.0's interpreter: one worker spending until its backend refuses; prints calls made.
OLD_WORKER = """
import sys, time
from shekel.backends.redis import RedisBackend
url, latency, mode, call, cap = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
backend = RedisBackend(url=url)
made = 0
if mode == "ops":
    stop = time.time() + latency
    while time.time() < stop:
        backend.check_and_add("ops", {"usd": 1e-9}, {"usd": 1e12}, {"usd": 3600.0})
        made += 1
    print(made)
    sys.exit()
while True:
    time.sleep(latency)  # the call: sent, answered, paid for
    made += 1
    allowed, _ = backend.check_and_add("cap", {"usd": call}, {"usd": cap}, {"usd": 3600.0})
    if not allowed:
        break  # its budget raises BudgetExceededError now, after the call was made
print(made)
"""


def _ours(url: str, seed: int, queue: Any) -> None:
    from shekel.ledger.shared import Ask, Charge, SharedLimits, StoreNoRoom, parse_window
    from shekel.stores import RedisStore

    store = RedisStore(url)
    limits = [SharedLimits("cap", parse_window(None), int(CAP_USD * 1e9), None, None)]
    made = i = 0
    while True:
        i += 1
        hold_id = f"w{seed}:{i}:x"
        try:
            store.reserve(limits, Ask(hold_id, f"w{seed}", CALL_NANO, 0, 1, 1, 1, 2, 600.0))
        except StoreNoRoom as refused:
            if not refused.waitable:
                break
            time.sleep(0.001)
            continue
        time.sleep(LATENCY)  # the call
        made += 1
        store.settle(["cap"], hold_id, Charge(CALL_NANO, 1, 1, "ok"))
    queue.put(made)


def _flush(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


def main(old_python: str) -> int:
    with _redis_server() as url:
        if url is None:
            print("redis-server or redis-py is missing")
            return 1
        print(
            f"{CAP_USD:.2f} USD cap, {CALL_USD} USD calls of {LATENCY * 1000:.0f} ms; real spend (overshoot):"
        )
        for n in WORKERS:
            _flush(url)
            olds = [
                subprocess.Popen(
                    [
                        old_python,
                        "-I",
                        "-c",
                        OLD_WORKER,
                        url,
                        str(LATENCY),
                        "cap",
                        str(CALL_USD),
                        str(CAP_USD),
                    ],
                    stdout=subprocess.PIPE,
                    cwd="/tmp",
                )
                for _ in range(n)
            ]
            old_made = sum(int(p.communicate()[0]) for p in olds)
            _flush(url)
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            ours = [context.Process(target=_ours, args=(url, seed, queue)) for seed in range(n)]
            for p in ours:
                p.start()
            our_made = sum(queue.get(timeout=300) for _ in ours)
            for p in ours:
                p.join()
            old_spent, our_spent = old_made * CALL_USD, our_made * CALL_USD
            print(
                f"  {n} worker{'s' if n > 1 else ' '}: shekel 1.2.0 ${old_spent:.2f} "
                f"(+${max(0.0, old_spent - CAP_USD):.2f}, {old_made} calls); "
                f"this shekel ${our_spent:.2f} (+${max(0.0, our_spent - CAP_USD):.2f}, {our_made} calls)"
            )
        _flush(url)
        olds = [
            subprocess.Popen(
                [old_python, "-I", "-c", OLD_WORKER, url, "3", "ops", "0", "0"],
                stdout=subprocess.PIPE,
                cwd="/tmp",
            )
            for _ in range(8)
        ]
        ops = sum(int(p.communicate()[0]) for p in olds) / 3
        print(f"shekel 1.2.0 check_and_add from 8 processes: {ops:,.0f}/s (one script per call, after it)")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        __package__ = "benchmarks"
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
