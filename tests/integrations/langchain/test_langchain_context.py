"""A bound BudgetCallbackHandler never leaves its budget active in the caller's context.

A LangChain stream is a generator: its run starts inside the caller's first ``next()`` and the caller's code
runs between chunks. The handler makes its budget active only until the request is made; a stream read
part-way, dropped, or broken mid-way leaves the caller's active budget as it was, lets the caller's ``with``
exit cleanly, and later calls are not charged to the bound budget. Real langchain-core and
langchain-huggingface objects, over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")

from langchain_core.runnables import RunnableConfig
from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint

from shekel import Budget, BudgetExceededError, budget, current_budget
from shekel.integrations.langchain import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer

PRICES = {"input": 1.0, "output": 2.0}
HELLO = Decimal("0.015")  # "hello there" to the chat model: 5 input tokens, 5 output tokens
WORDS = 5


@pytest.fixture
def tenant() -> Budget:
    return budget(max_usd=1, price_per_1k_tokens=PRICES, name="tenant")


def bound_to(tenant: Budget) -> RunnableConfig:
    return {"callbacks": [BudgetCallbackHandler(budget=tenant)]}


@contextmanager
def caller(outer: str) -> Iterator[Budget | None]:
    """The caller's own budget around the stream ("request"), or none at all ("none")."""
    if outer == "none":
        yield None
        return
    with budget(max_usd=1, price_per_1k_tokens=PRICES, name="request") as request:
        yield request


@asynccontextmanager
async def acaller(outer: str) -> AsyncIterator[Budget | None]:
    if outer == "none":
        yield None
        return
    async with budget(max_usd=1, price_per_1k_tokens=PRICES, name="request") as request:
        yield request


def later_calls_are_not_charged_to(tenant: Budget, request: Budget | None, chat: ChatHuggingFace) -> None:
    assert current_budget() is None
    calls = tenant.calls, None if request is None else request.calls
    chat.invoke("hello there")  # outside any budget, without the handler
    assert (tenant.calls, None if request is None else request.calls) == calls
    assert current_budget() is None


def charged_once(
    tenant: Budget,
    request: Budget | None,
    server: FakeInferenceServer,
    requests: int,
    *,
    broken: bool = False,
) -> None:
    """The stream's call is charged to ``tenant`` alone, and nothing is left reserved."""
    assert tenant.calls + tenant.failed_calls == 1 and tenant.reserved == 0
    assert tenant.spent_exact > 0
    if broken:  # the connection dropped: charged what the call held, marked so, counted as failed
        assert tenant.records[0].estimated and tenant.records[0].outcome == "unknown"
        assert tenant.failed_calls == 1
    else:
        assert tenant.spent_exact <= HELLO
    assert request is None or (request.calls == 0 and request.spent_exact == 0)
    assert server.request_count == requests


OUTER = pytest.mark.parametrize("outer", ["request", "none"])


# ------------------------------------------------------------------------------------------ read part-way
@OUTER
@pytest.mark.parametrize("model", ["chat", "llm"])
def test_a_partly_read_stream_leaves_the_callers_budget_active(
    outer: str,
    model: str,
    chat: ChatHuggingFace,
    llm: HuggingFaceEndpoint,
    tenant: Budget,
    server: FakeInferenceServer,
) -> None:
    runnable: Any = chat if model == "chat" else llm
    with caller(outer) as request:
        stream = iter(runnable.stream("hello there", config=bound_to(tenant)))
        next(stream)
        assert current_budget() is request
        assert tenant.reserved > 0, "the call is in flight, reserved on the bound budget"
    # the `with` exited cleanly (no "not the innermost active budget" error)
    later_calls_are_not_charged_to(tenant, request, chat)
    rest = list(stream)  # the stream can still be read to its end, here, outside any budget
    assert rest
    assert current_budget() is None
    charged_once(tenant, request, server, requests=2)
    if model == "chat":
        assert tenant.spent_exact == HELLO and not tenant.records[0].estimated


@OUTER
async def test_a_partly_read_async_stream_leaves_the_callers_budget_active(
    outer: str, chat: ChatHuggingFace, tenant: Budget, server: FakeInferenceServer
) -> None:
    async with acaller(outer) as request:
        stream = chat.astream("hello there", config=bound_to(tenant))
        await stream.__anext__()
        assert current_budget() is request
        assert tenant.reserved > 0
    assert current_budget() is None
    calls = tenant.calls
    await chat.ainvoke("hello there")  # outside any budget, without the handler
    assert tenant.calls == calls and (request is None or request.calls == 0)
    later_calls_are_not_charged_to(tenant, request, chat)
    assert [chunk async for chunk in stream]
    assert current_budget() is None
    charged_once(tenant, request, server, requests=3)
    assert tenant.spent_exact == HELLO


# ------------------------------------------------------------------------------------------ dropped
@OUTER
def test_a_stream_dropped_part_way_and_collected(
    outer: str, chat: ChatHuggingFace, tenant: Budget, server: FakeInferenceServer
) -> None:
    with caller(outer) as request:
        stream = iter(chat.stream("hello there", config=bound_to(tenant)))
        next(stream)
        del stream
        gc.collect()
        assert current_budget() is request
    later_calls_are_not_charged_to(tenant, request, chat)
    charged_once(tenant, request, server, requests=2)


@OUTER
async def test_an_async_stream_dropped_part_way_and_collected(
    outer: str, chat: ChatHuggingFace, tenant: Budget, server: FakeInferenceServer
) -> None:
    async with acaller(outer) as request:
        stream = chat.astream("hello there", config=bound_to(tenant))
        await stream.__anext__()
        del stream
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)  # the event loop closes a collected async generator in a task
        assert current_budget() is request
    later_calls_are_not_charged_to(tenant, request, chat)
    charged_once(tenant, request, server, requests=2)


# ------------------------------------------------------------------------------------------ broken mid-way
@OUTER
def test_a_stream_broken_mid_way_by_the_server(
    outer: str, chat: ChatHuggingFace, tenant: Budget, server: FakeInferenceServer
) -> None:
    server.drop_stream_after(3)
    received = []
    with caller(outer) as request:
        with pytest.raises(httpx.HTTPError):
            for chunk in chat.stream("hello there", config=bound_to(tenant)):
                received.append(chunk)
        assert current_budget() is request
    assert received, "the connection broke after some chunks were read"
    later_calls_are_not_charged_to(tenant, request, chat)
    charged_once(tenant, request, server, requests=2, broken=True)


@OUTER
async def test_an_async_stream_broken_mid_way_by_the_server(
    outer: str, chat: ChatHuggingFace, tenant: Budget, server: FakeInferenceServer
) -> None:
    server.drop_stream_after(3)
    received = []
    async with acaller(outer) as request:
        with pytest.raises(httpx.HTTPError):
            async for chunk in chat.astream("hello there", config=bound_to(tenant)):
                received.append(chunk)
        assert current_budget() is request
    assert received
    later_calls_are_not_charged_to(tenant, request, chat)
    charged_once(tenant, request, server, requests=2, broken=True)


@OUTER
def test_an_error_raised_by_the_caller_mid_stream_leaves_the_with_unmasked(
    outer: str, chat: ChatHuggingFace, tenant: Budget, server: FakeInferenceServer
) -> None:
    stream = iter(chat.stream("hello there", config=bound_to(tenant)))
    with pytest.raises(KeyError, match="caller"), caller(outer) as request:
        for _chunk in stream:  # the stream stays referenced while the `with` exits
            raise KeyError("caller")
    assert current_budget() is None
    later_calls_are_not_charged_to(tenant, request, chat)
    stream.close()  # type: ignore[attr-defined]
    charged_once(tenant, request, server, requests=2)


@OUTER
async def test_an_error_raised_by_the_caller_mid_async_stream_leaves_the_with_unmasked(
    outer: str, chat: ChatHuggingFace, tenant: Budget, server: FakeInferenceServer
) -> None:
    stream = chat.astream("hello there", config=bound_to(tenant))
    with pytest.raises(KeyError, match="caller"):
        async with acaller(outer) as request:
            async for _chunk in stream:
                raise KeyError("caller")
    assert current_budget() is None
    later_calls_are_not_charged_to(tenant, request, chat)
    await stream.aclose()  # type: ignore[attr-defined]
    charged_once(tenant, request, server, requests=2)


@OUTER
def test_a_stream_cut_off_at_the_cap_inside_another_budget(
    outer: str, chat: ChatHuggingFace, server: FakeInferenceServer
) -> None:
    # A server that ignores max_tokens=5 and streams 60 tokens: the handler stops reading at the cap.
    events = [
        '{"object":"chat.completion.chunk","id":"","created":0,"model":"m","choices":[{"index":0,'
        f'"delta":{{"role":"assistant","content":"w{i} "}},"finish_reason":null}}]}}'
        for i in range(60)
    ]
    server.respond_next(
        "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n", content_type="text/event-stream"
    )
    small = budget(max_usd=0.07, price_per_1k_tokens=PRICES, name="small")
    with caller(outer) as request:
        with pytest.raises(BudgetExceededError):
            for _chunk in chat.stream("hello there", config=bound_to(small)):
                pass
        assert current_budget() is request
    later_calls_are_not_charged_to(small, request, chat)
    assert small.calls == 1 and small.reserved == 0 and small.spent_exact <= Decimal("0.07")
