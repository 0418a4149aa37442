"""Review round 9: a reserve whose answer is lost (the command ran, the connection dropped before its
answer came back). A real redis-server behind a small TCP proxy that can lose the server's answers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shekel import StoreError, budget
from shekel.testing import FakeInferenceServer

from .._redis_server import redis_server

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("redis")

PRICES = {"input": 1.0, "output": 2.0}


class _Proxy:
    """Forwards a client's bytes to the server; with ``lose_answers`` it drops the server's next answer and
    cuts the connection (a network cut, a failover, a NAT timeout right after the command was sent)."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.lose_answers = False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or (answers and self.lose_answers):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sk in (src, dst):
                with contextlib.suppress(OSError):
                    sk.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxied() -> Iterator[tuple[str, _Proxy]]:
    with redis_server() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        proxy = _Proxy(port)
        try:
            yield url, proxy
        finally:
            proxy.close()


def test_a_call_refused_because_the_reserve_answer_was_lost_leaves_no_hold(
    proxied: tuple[str, _Proxy],
) -> None:
    """The reserve script ran (the hold is in Redis) but its answer was lost: the call is refused with
    StoreError and never sent, yet its hold stays for the whole lease (600 s by default: on a small cap,
    room no process can use) and is then charged its worst case as a failed call, counted against
    max_llm_calls. RELEASE is idempotent (a hold that is not there is a no-op), so shekel could give the
    hold back after any reserve whose outcome it does not know; it does not (``_sharing.take_holds`` only
    releases holds it saw granted)."""
    url, proxy = proxied
    with FakeInferenceServer() as server:
        client = huggingface_hub.InferenceClient(base_url=server.url)
        watcher = budget(max_usd=1, name="lost", store=url, lease=2, price_per_1k_tokens=PRICES)
        store = f"redis://127.0.0.1:{proxy.port}/0"
        with budget(max_usd=1, name="lost", store=store, lease=2, price_per_1k_tokens=PRICES) as b:
            _ = b.spent  # connected, scripts loaded
            proxy.lose_answers = True
            with pytest.raises(StoreError):
                client.chat_completion([{"role": "user", "content": "hi"}], model="m", max_tokens=5)
            proxy.lose_answers = False
        assert server.request_count == 0  # refused before sending, as on_store_error='closed' promises
        time.sleep(2.3)  # the lease (2 s) ran out
        seen = (watcher.calls_in_flight, watcher.failed_calls, watcher.spent)
        assert seen == (0, 0, 0), f"(in flight, failed, spent) = {seen}"  # observed: (0, 1, 0.055)


async def test_an_async_call_refused_because_the_reserve_answer_was_lost_leaves_no_hold(
    proxied: tuple[str, _Proxy],
) -> None:
    """The same through ``AsyncInferenceClient`` (redis.asyncio): the hold is released by the store's
    sending thread, the event loop never waiting on it."""
    url, proxy = proxied
    with FakeInferenceServer() as server:
        client = huggingface_hub.AsyncInferenceClient(base_url=server.url)
        watcher = budget(max_usd=1, name="alost", store=url, lease=2, price_per_1k_tokens=PRICES)
        store = f"redis://127.0.0.1:{proxy.port}/0"
        async with budget(max_usd=1, name="alost", store=store, lease=2, price_per_1k_tokens=PRICES):
            # one call first: the async client connected (and its scripts loaded) through the proxy
            await client.chat_completion([{"role": "user", "content": "hi"}], model="m", max_tokens=5)
            proxy.lose_answers = True
            with pytest.raises(StoreError):
                await client.chat_completion([{"role": "user", "content": "hi"}], model="m", max_tokens=5)
            proxy.lose_answers = False
        assert server.request_count == 1  # the second call was refused before sending
        first = watcher.spent_exact
        time.sleep(2.3)  # the lease (2 s) ran out: a hold left behind would be charged now
        seen = (watcher.calls, watcher.calls_in_flight, watcher.failed_calls, watcher.spent_exact)
        assert seen == (1, 0, 0, first), f"(calls, in flight, failed, spent) = {seen}"
        await client.close()
