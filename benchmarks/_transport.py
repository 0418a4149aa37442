"""Where the benchmarked calls go: an in-process httpx transport with canned answers, or loopback HTTP.

``huggingface_hub`` 1.x sends every request through one shared ``httpx.Client`` built by a factory it lets us
replace (``set_client_factory`` / ``set_async_client_factory``). Swapping in an ``httpx.MockTransport`` keeps
the whole real client (request building, headers, JSON and SSE parsing, dataclass output) and removes only
the socket, so the cost of shekel is not hidden behind the network.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.utils import _http

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BASE_URL = "http://inference.invalid"
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Explain in one paragraph what a transformer model is."},
]
REPLY_WORDS = 60
STREAM_CHUNKS = 200
PROMPT_TOKENS = 31
PRICES = {"input": 0.0002, "output": 0.0006}  # USD per 1k tokens


def _usage(completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    }


def chat_body(words: int = REPLY_WORDS) -> bytes:
    content = " ".join(f"word{i}" for i in range(words))
    return json.dumps(
        {
            "object": "chat.completion",
            "id": "chatcmpl-bench",
            "created": 1767225600,
            "model": MODEL,
            "system_fingerprint": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(words),
        }
    ).encode()


def stream_body(chunks: int = STREAM_CHUNKS, *, usage_chunk: bool) -> bytes:
    """An SSE chat stream of ``chunks`` content chunks, then (if asked) the usage-only chunk, then [DONE]."""
    base = {"object": "chat.completion.chunk", "id": "chatcmpl-bench", "created": 1767225600, "model": MODEL}
    events = []
    for i in range(chunks):
        last = i == chunks - 1
        delta = {"role": "assistant", "content": f" word{i}"}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if last else None}
        events.append({**base, "choices": [choice], "usage": None})
    if usage_chunk:
        events.append({**base, "choices": [], "usage": _usage(chunks)})
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def _handler() -> Callable[[httpx.Request], httpx.Response]:
    chat = chat_body()
    with_usage = stream_body(usage_chunk=True)
    without_usage = stream_body(usage_chunk=False)
    json_headers = {"content-type": "application/json"}
    sse_headers = {"content-type": "text/event-stream"}

    def handle(request: httpx.Request) -> httpx.Response:
        body = request.content
        if b'"stream": true' not in body and b'"stream":true' not in body:
            return httpx.Response(200, content=chat, headers=json_headers)
        usage = b'"include_usage": true' in body or b'"include_usage":true' in body
        return httpx.Response(200, content=with_usage if usage else without_usage, headers=sse_headers)

    return handle


class InFlight:
    """Counts requests the in-process server is answering at once (to show that calls really overlap)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def _worst_case_handler() -> Callable[[httpx.Request], httpx.Response]:
    """Chat answers that use every output token the request allows (``max_tokens``): the costliest answer."""
    bodies: dict[int, bytes] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        limit = json.loads(request.content).get("max_tokens") or REPLY_WORDS
        body = bodies.get(limit) or bodies.setdefault(limit, chat_body(limit))
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    return handle


@contextmanager
def in_process(latency: float = 0.0, *, worst_case: bool = False) -> Iterator[InFlight]:
    """Route huggingface_hub's HTTP through canned answers in this process (sync and async clients).

    With ``latency``, each answer waits that many seconds first (``time.sleep`` for the sync client,
    ``asyncio.sleep`` for the async one), so that concurrent calls overlap as they would over a network.
    With ``worst_case``, chat answers use all the ``max_tokens`` the request allows.
    """
    handler = _worst_case_handler() if worst_case else _handler()
    in_flight = InFlight()

    def handle_sync(request: httpx.Request) -> httpx.Response:
        with in_flight:
            if latency:
                time.sleep(latency)
            return handler(request)

    async def handle_async(request: httpx.Request) -> httpx.Response:
        with in_flight:
            if latency:
                await asyncio.sleep(latency)
            return handler(request)

    sync_transport = httpx.MockTransport(handle_sync if latency else handler)
    async_transport = httpx.MockTransport(handle_async if latency else handler)
    _http.set_client_factory(
        lambda: httpx.Client(
            transport=sync_transport,
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=None,
        )
    )
    _http.set_async_client_factory(
        lambda: httpx.AsyncClient(
            transport=async_transport,
            event_hooks={
                "request": [_http.async_hf_request_event_hook],
                "response": [_http.async_hf_response_event_hook],
            },
            follow_redirects=True,
            timeout=None,
        )
    )
    try:
        yield in_flight
    finally:
        _http.set_client_factory(_http.default_client_factory)
        _http.set_async_client_factory(_http.default_async_client_factory)


def client(base_url: str = BASE_URL) -> InferenceClient:
    return InferenceClient(base_url=base_url, api_key="hf_benchmark_not_a_token")


def async_client(base_url: str = BASE_URL) -> AsyncInferenceClient:
    return AsyncInferenceClient(base_url=base_url, api_key="hf_benchmark_not_a_token")


_SERVER_SCRIPT = f"""
import sys
from shekel.testing import FakeInferenceServer

with FakeInferenceServer(model={MODEL!r}) as server:
    server._httpd.RequestHandlerClass.disable_nagle_algorithm = True
    print(server.url, flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin
"""


@contextmanager
def loopback() -> Iterator[str]:
    """A ``FakeInferenceServer`` on 127.0.0.1, in its own process (so it does not share our GIL); yields its URL.

    Its handler writes the headers and the body separately; with Nagle's algorithm on, the second write waits
    for the client's delayed ACK (about 40 ms on Linux), which would drown every figure. TCP_NODELAY is set on
    that server's own handler class to measure the client, not that stall.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the loopback server did not start (said {url!r})")
        yield url
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
