"""Shared fixtures: a real local HF-protocol server on 127.0.0.1 and a clean patch state per test."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shekel.testing import FakeInferenceServer

# Never let a developer's token reach a request or a report made by the tests.
# Nor a download of a tokenizer: tests count with tokenizers they build and lay out in a temporary cache.
for _name in (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACEHUB_API_TOKEN",
    "SHEKEL_PRICING",
    "SHEKEL_TOKENIZER_DOWNLOAD",
):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PRICES = {"input": 1.0, "output": 2.0}  # USD per 1k tokens: $0.001 per input token, $0.002 per output token


@pytest.fixture(autouse=True)
def _fresh_huggingface_hub_session() -> Iterator[None]:
    """Retire huggingface_hub's shared HTTP client after each test.

    A stream a test abandons (a parse error mid-stream, a ``break``) is finalised whenever the collector runs;
    if that is inside the same connection pool's ``handle_request``, httpcore re-takes the pool's
    non-reentrant lock on the same thread and the suite hangs (encode/httpcore#996, #1108). A stream of a
    retired pool takes only that pool's lock, which nothing holds.
    """
    yield
    hub = sys.modules.get("huggingface_hub")
    close_session = getattr(hub, "close_session", None)
    if close_session is not None:
        close_session()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the session (skipped without one, failed under CI): tests/_redis_server.py."""
    from ._redis_server import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture
def redis_store_url(redis_url: str) -> str:
    """The session's redis-server, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return redis_url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A shared-budget store URL: each test that takes it runs against SQLite (a file of its own) and
    against the session's real redis-server (emptied for it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.db'}"
    url: str = request.getfixturevalue("redis_store_url")
    return url


@pytest.fixture
def server() -> Iterator[FakeInferenceServer]:
    with FakeInferenceServer() as fake:
        yield fake


@pytest.fixture
def prices() -> dict[str, float]:
    return dict(PRICES)


_Client = TypeVar("_Client")


@pytest.fixture
async def aclosing() -> AsyncIterator[Callable[[_Client], _Client]]:
    """``client = aclosing(AsyncInferenceClient(...))``: closed at the end of the test, inside its event loop.

    An async client left open holds sockets whose event loop is gone by the time they are collected: Python
    then warns (``ResourceWarning``) in whichever test happens to run the collector.
    """
    opened: list[Any] = []

    def track(client: _Client) -> _Client:
        opened.append(client)
        return client

    yield track
    for client in reversed(opened):
        close = getattr(client, "aclose", None) or client.close
        result = close()
        if inspect.isawaitable(result):
            await result
