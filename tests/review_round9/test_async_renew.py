"""Review round 9: an async stream renews its lease with the store's *sync* ``renew``, on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from shekel import budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")

PRICES = {"input": 1.0, "output": 2.0}
MESSAGES = [{"role": "user", "content": "hi there"}]


def _make_store_busy(store_url: str, seconds: float) -> threading.Thread:
    """Another process's long write (SQLite: a transaction held; Redis: CLIENT PAUSE, as a failover or a
    slow script does)."""

    def block() -> None:
        if store_url.startswith("sqlite"):
            db = sqlite3.connect(store_url[len("sqlite:///") :], isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            time.sleep(seconds)
            db.execute("COMMIT")
            db.close()
        else:
            import redis

            with redis.Redis.from_url(store_url) as admin:
                admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")

    thread = threading.Thread(target=block)
    thread.start()
    return thread


async def test_an_async_stream_renewing_its_lease_never_blocks_the_event_loop(store_url: str) -> None:
    """Issue 9 / docs: async calls "never block the event loop". ``_call._iterate_async`` calls
    ``renew_if_due`` (sync: ``store.renew``, one SQLite transaction with a 30 s busy timeout, or a Redis
    round trip with a 30 s socket timeout) between chunks. With the store busy for 1.5 s the whole event
    loop stops for about 1.4 s (every other task, every other request of the service) -- up to 30 s with
    the defaults."""
    with FakeInferenceServer(chunk_delay=0.1) as server:
        client = huggingface_hub.AsyncInferenceClient(base_url=server.url)
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        blocker = None
        async with budget(max_usd=1, name="astream", store=store_url, lease=0.3, price_per_1k_tokens=PRICES):
            stream = await client.chat_completion(MESSAGES, model="m", max_tokens=20, stream=True)
            n = 0
            async for _ in stream:
                n += 1
                if n == 2:
                    blocker = _make_store_busy(store_url, 1.5)
                    await asyncio.sleep(0.05)
        stop.set()
        await ticking
        assert blocker is not None
        await asyncio.to_thread(blocker.join)
        await client.close()
    assert max(gaps) < 0.5, f"the event loop stood still for {max(gaps):.2f} s"
