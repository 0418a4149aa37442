"""Review round 10: a Redis reserve whose answer is lost is undone by a RELEASE queued on the wire, sent on
another connection. Nothing orders the two: a RESERVE still on its way to the server (held up in the
network, in a proxy, in the kernel's buffers) runs after the RELEASE, and its hold stays."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shekel import StoreError
from shekel.ledger.shared import Ask, SharedLimits, parse_window

redis = pytest.importorskip("redis")


class StallingProxy:
    """A TCP proxy to redis-server that can hold back what the connections open now send to the server
    (a slow network path), forwarding it later, even after the client gave up and closed."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections: list[threading.Event] = []  # per connection: set = forward
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            go = threading.Event()
            go.set()
            with self.lock:
                self.connections.append(go)
            for source, target, gate in ((client, upstream, go), (upstream, client, None)):
                thread = threading.Thread(target=self._pump, args=(source, target, gate), daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, gate: threading.Event | None) -> None:
        held = b""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if gate is not None and not gate.is_set():
                held += data
                if data:
                    continue
                gate.wait(10)  # the client closed: what it sent still reaches the server, late
            try:
                if held:
                    target.sendall(held)
                    held = b""
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return

    def stall(self) -> None:
        with self.lock:
            for gate in self.connections:
                gate.clear()

    def unstall(self) -> None:
        with self.lock:
            for gate in self.connections:
                gate.set()

    def close(self) -> None:
        self.unstall()
        self.listener.close()


@pytest.fixture
def proxy(redis_store_url: str) -> Iterator[StallingProxy]:
    port = int(redis_store_url.rsplit(":", 1)[1].split("/", 1)[0])
    stalling = StallingProxy(port)
    yield stalling
    stalling.close()


def test_a_reserve_arriving_after_its_release_leaves_no_hold(
    redis_store_url: str, proxy: StallingProxy
) -> None:
    """docs/shared-budgets.md: "a Redis reservation whose answer is lost ... refuses the call, and its hold
    is released with the store's next command ..., so it neither blocks room until its lease ends nor is
    charged". The reserve times out (socket_timeout=0.3) while its bytes are still on their way; the wire
    queues RELEASE and sends it with the next command on a new connection, where it runs at once (a no-op:
    nothing held yet); then the reserve arrives and takes its hold, which nothing releases. Same for the
    async path (the RELEASE goes by the sync wire's sending thread, on another connection)."""
    from shekel.stores import RedisStore

    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.3")
    limits = SharedLimits("lost", parse_window(None), 10**9, None, None)
    store.read(limits)  # the wire's connection, through the proxy
    proxy.stall()
    with pytest.raises(StoreError):
        store.reserve([limits], Ask("h:1:lost", "p1", 10**6, 0, 5, 5, 5, 0, 600.0))
    store.flush()  # the queued RELEASE, on a new connection
    proxy.unstall()  # the reserve reaches the server
    admin = redis.Redis.from_url(redis_store_url)
    deadline = time.monotonic() + 2
    while not admin.hexists("shekel:{lost}:holds", "h:1:lost") and time.monotonic() < deadline:
        time.sleep(0.02)
    store.read(limits)  # any later command
    store.flush()
    assert store.read(limits).reserved == 0  # observed: 1,000,000 (held until the lease, then charged)
