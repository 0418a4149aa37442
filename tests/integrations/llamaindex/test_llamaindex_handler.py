"""BudgetCallbackHandler with real LlamaIndex objects and HuggingFaceInferenceAPI over HTTP to the local server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.async_utils import asyncio_run
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import ChatMessage
from llama_index.core.query_engine import BaseQueryEngine
from llama_index.llms.huggingface_api import HuggingFaceInferenceAPI

from shekel import Budget, BudgetExceededError, budget, current_budget
from shekel._budget import OUTPUT_MARGIN_TOKENS
from shekel._usage import prompt_tokens_high
from shekel.integrations import llamaindex
from shekel.integrations.llamaindex import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer, prompt_tokens_of

from .conftest import NUM_OUTPUT, cost

MakeLLM = Callable[..., HuggingFaceInferenceAPI]
HELLO = [ChatMessage(role="user", content="hello there")]  # the server counts 2 words + 3 = 5 prompt tokens
HELLO_COST = cost(5, NUM_OUTPUT)
REPLY = "Transformers are neural networks that"  # the server's reply cut to NUM_OUTPUT words


def chat_requests(server: FakeInferenceServer) -> list[dict[str, Any]]:
    assert all(r.path == "/v1/chat/completions" for r in server.requests)
    return [r.body for r in server.requests]


def query_engine(llm: HuggingFaceInferenceAPI, **kwargs: Any) -> BaseQueryEngine:
    documents = [
        Document(text="Transformers weigh every token against every other token with attention."),
        Document(text="A budget stops LLM spending at a hard cap."),
    ]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    return index.as_query_engine(llm=llm, similarity_top_k=2, **kwargs)


def server_cost(body: dict[str, Any]) -> Any:
    """The exact cost of the answer the local server gave to this request."""
    return cost(prompt_tokens_of(body["messages"]), body["max_tokens"])


# ------------------------------------------------------------------ every call method, counted once
def test_chat(make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]) -> None:
    llm = make_llm(BudgetCallbackHandler())
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        response = llm.chat(HELLO)
    assert response.message.content == REPLY
    assert b.spent_exact == HELLO_COST
    assert (b.calls, b.input_tokens, b.output_tokens, b.estimated_calls) == (1, 5, NUM_OUTPUT, 0)
    assert [body["max_tokens"] for body in chat_requests(server)] == [NUM_OUTPUT]


def test_complete(make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]) -> None:
    llm = make_llm(BudgetCallbackHandler())
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        assert llm.complete("hello there").text == REPLY
    assert b.spent_exact == HELLO_COST
    assert b.calls == 1 and len(chat_requests(server)) == 1


def test_stream_chat_yields_every_chunk(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    llm = make_llm(BudgetCallbackHandler())
    without_budget = [r.delta for r in llm.stream_chat(HELLO)]
    server.reset()
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        chunks = list(llm.stream_chat(HELLO))
    # The usage-only chunk shekel asks for is not passed on, so LlamaIndex does not index its empty choices.
    assert [r.delta for r in chunks] == without_budget and len(chunks) == NUM_OUTPUT
    assert chunks[-1].message.content == REPLY
    assert b.spent_exact == HELLO_COST and b.estimated_calls == 0
    (body,) = chat_requests(server)
    assert body["stream_options"] == {"include_usage": True}


def test_abandoned_streams_are_charged_for_what_was_received_and_broken_ones_what_they_held(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    llm = make_llm(BudgetCallbackHandler())
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        stream = llm.stream_chat(HELLO)
        next(stream), next(stream)
        stream.close()
        server.drop_stream_after(2)
        with pytest.raises(httpx.RemoteProtocolError):
            list(llm.stream_chat(HELLO))
    # Abandoned, no usage arrived: prompt estimate 7 (11 bytes / 4 + 4 per message), output "Transformers
    # are" = 16 / 4. Broken by the server: what the provider did is unknown, so charged what the call held.
    abandoned, broken = b.records
    assert (abandoned.input_tokens, abandoned.output_tokens, abandoned.estimated) == (7, 4, True)
    assert broken.outcome == "unknown" and broken.estimated and broken.output_tokens > 4
    assert b.spent_exact == cost(7, 4) + broken.cost and b.reserved == 0
    assert (b.calls, b.failed_calls) == (1, 1) and len(chat_requests(server)) == 2


def test_stream_complete(make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]) -> None:
    llm = make_llm(BudgetCallbackHandler())
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        chunks = list(llm.stream_complete("hello there"))
    assert chunks[-1].text == REPLY
    assert b.spent_exact == HELLO_COST and b.calls == 1 and len(chat_requests(server)) == 1


async def test_text_generation_task(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    llm = make_llm(BudgetCallbackHandler(), task="text-generation")
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        assert llm.complete("hello there").text == REPLY
        assert [c.delta for c in llm.stream_complete("hello there")] == REPLY.replace(" ", "| ").split("|")
        assert (await make_llm(task="text-generation").acomplete("hello there")).text == REPLY
    assert [(r.path, r.body["parameters"]["max_new_tokens"]) for r in server.requests] == [
        ("/", NUM_OUTPUT)
    ] * 3
    # TGI reports the exact output tokens (details) but not the prompt's: 11 bytes / 4, rounded up, is 3.
    assert [(r.input_tokens, r.output_tokens, r.estimated) for r in b.records] == [(3, NUM_OUTPUT, True)] * 3
    assert b.spent_exact == 3 * cost(3, NUM_OUTPUT)


async def test_achat_and_acomplete(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    llm = make_llm(BudgetCallbackHandler())
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        assert (await llm.achat(HELLO)).message.content == REPLY
        assert (await llm.acomplete("hello there")).text == REPLY
    assert b.spent_exact == 2 * HELLO_COST
    assert b.calls == 2 and len(chat_requests(server)) == 2


async def settled(b: Budget, calls: int) -> None:
    # astream_chat leaves the adapter's stream unfinished; the event loop finalises it (no clock involved).
    for _ in range(100):
        if b.calls == calls:
            return
        await asyncio.sleep(0)


async def test_astream_chat_stops_at_finish_reason(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    without_budget = [r.delta async for r in await make_llm().astream_chat(HELLO)]
    server.reset()
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        chunks = [r.delta async for r in await make_llm(BudgetCallbackHandler()).astream_chat(HELLO)]
        await settled(b, 1)
    # LlamaIndex breaks out at the chunk carrying finish_reason (dropping that chunk's text, with or without
    # shekel). The adapter reads the usage chunk it asked for before handing that chunk on, so the call is
    # still charged at the server's exact usage.
    assert chunks == without_budget == ["Transformers", " are", " neural", " networks"]
    assert (b.calls, b.estimated_calls, b.reserved) == (1, 0, 0)
    (record,) = b.records
    assert (record.output_tokens, record.streamed) == (NUM_OUTPUT, True)
    assert b.spent_exact == HELLO_COST
    assert len(chat_requests(server)) == 1


async def test_astream_chat_exact_when_usage_rides_on_the_last_chunk(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    server.stream_usage = "final"  # together, fireworks, cerebras: usage on the finish_reason chunk
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        chunks = [r async for r in await make_llm(BudgetCallbackHandler()).astream_chat(HELLO)]
        await settled(b, 1)
    assert len(chunks) == NUM_OUTPUT - 1
    assert b.spent_exact == HELLO_COST and b.estimated_calls == 0


async def test_llm_reused_after_an_async_stream_fails_and_costs_nothing(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    llm = make_llm(BudgetCallbackHandler())
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        [r async for r in await llm.astream_chat(HELLO)]
        await settled(b, 1)
        # LlamaIndex closed the LLM's async client at the end of the stream.
        with pytest.raises(RuntimeError, match="client has been closed"):
            await llm.achat(HELLO)
    assert (b.calls, b.reserved) == (1, 0)
    assert len(chat_requests(server)) == 1


async def test_astream_complete(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    server.stream_usage = "final"
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        chunks = [r async for r in await make_llm(BudgetCallbackHandler()).astream_complete("hello there")]
        await settled(b, 1)
    assert chunks[-1].text == "Transformers are neural networks"
    assert b.spent_exact == HELLO_COST and len(chat_requests(server)) == 1


# ------------------------------------------------------------------ query engines
def test_query_engine(make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    engine = query_engine(make_llm())
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        response = engine.query("What are transformers?")
    assert str(response) == REPLY
    (body,) = chat_requests(server)
    assert "What are transformers?" in body["messages"][-1]["content"]
    assert b.spent_exact == server_cost(body)
    assert b.calls == 1 and b.estimated_calls == 0


def test_streaming_query_engine(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    engine = query_engine(make_llm(), streaming=True)
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        response = engine.query("What are transformers?")
        assert isinstance(response, StreamingResponse)
        text = "".join(response.response_gen)
    assert text == REPLY
    (body,) = chat_requests(server)
    assert b.spent_exact == server_cost(body) and b.calls == 1


def test_nested_budgets_get_their_own_queries(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    engine = query_engine(make_llm())
    with budget(max_usd=1, name="outer", price_per_1k_tokens=prices) as outer:
        with budget(max_usd=0.5, name="inner") as inner:
            engine.query("What are transformers?")
        engine.query("What does a budget do?")
    first, second = chat_requests(server)
    assert inner.spent_exact == server_cost(first) and inner.calls == 1
    assert outer.spent_exact == server_cost(first) + server_cost(second) and outer.calls == 2
    assert outer.records[0].cost == server_cost(second)  # the outer budget's own call


def test_budget_runs_out_between_two_queries(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    engine = query_engine(make_llm())
    with budget(price_per_1k_tokens=prices) as probe:
        engine.query("What are transformers?")
    spent_by_one = probe.spent_exact
    (body,) = chat_requests(server)
    server.reset()
    # Exactly the worst case shekel holds for this query's call: it fits once, and the second does not.
    worst_case = cost(prompt_tokens_high(body["messages"]), body["max_tokens"] + OUTPUT_MARGIN_TOKENS)
    with budget(max_usd=worst_case, price_per_1k_tokens=prices) as b:
        engine.query("What are transformers?")
        with pytest.raises(BudgetExceededError) as refused:
            engine.query("What are transformers?")
    assert len(server.requests) == 1  # the second query sent nothing
    assert b.spent_exact == spent_by_one and b.calls == 1 and b.reserved == 0
    assert refused.value.reason == "usd" and refused.value.spent_exact == spent_by_one


@pytest.mark.parametrize("priced", [True, False], ids=["priced", "unpriced"])
def test_query_refused_before_retrieval_when_calls_are_used_up(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float], priced: bool
) -> None:
    events = LlamaDebugHandler()
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler(), events])
    engine = query_engine(make_llm())
    with budget(max_llm_calls=1, price_per_1k_tokens=prices if priced else None) as b:
        engine.query("What are transformers?")
        events.flush_event_logs()
        with pytest.raises(BudgetExceededError) as refused:
            engine.query("What does a budget do?")
    assert refused.value.reason == "calls"
    assert events.get_events(CBEventType.RETRIEVE) == []  # stopped at the query's start event
    assert len(server.requests) == 1 and b.calls == 1


@pytest.mark.parametrize("priced", [True, False], ids=["priced", "unpriced"])
def test_query_refused_before_retrieval_when_the_last_call_is_in_flight(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float], priced: bool
) -> None:
    # The gate follows the core's rule: a call in flight holds its max_llm_calls slot.
    from .test_llamaindex_other_llms import ServerLLM

    events = LlamaDebugHandler()
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler(), events])
    engine = query_engine(make_llm())
    streamer = ServerLLM(url=server.url, callback_manager=Settings.callback_manager)
    with budget(max_llm_calls=1, price_per_1k_tokens=prices if priced else None) as b:
        stream = streamer.stream_complete("hello there")
        next(stream)
        with pytest.raises(BudgetExceededError) as refused:
            engine.query("What are transformers?")
        for _ in stream:
            pass
    assert refused.value.reason == "calls"
    assert events.get_events(CBEventType.RETRIEVE) == []  # stopped at the query's start event
    assert len(server.requests) == 1 and b.calls == 1 and b.reserved == 0


def test_unpriced_query_gate_warns_of_no_model_of_its_own(
    make_llm: MakeLLM, server: FakeInferenceServer
) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    engine = query_engine(make_llm())
    with pytest.warns(UserWarning) as warned, budget(max_usd=1, max_llm_calls=5) as b:
        engine.query("What are transformers?")
    messages = [str(w.message) for w in warned]
    assert not any("model None" in m for m in messages)
    assert any(server.url in m for m in messages)  # the call itself warns, for its own model
    assert b.calls == 1 and b.reserved == 0


def test_no_budget_counts_nothing_and_changes_nothing(make_llm: MakeLLM, server: FakeInferenceServer) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    assert str(query_engine(make_llm()).query("What are transformers?")) == REPLY
    (body,) = chat_requests(server)
    assert "stream_options" not in body


# ------------------------------------------------------------------ a handler bound to a budget
def test_bound_handler_charges_its_budget_outside_any_with(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, price_per_1k_tokens=prices)
    llm = make_llm(BudgetCallbackHandler(budget=b))
    llm.chat(HELLO)
    assert list(llm.stream_chat(HELLO))[-1].message.content == REPLY
    llm.complete("hello there")
    assert current_budget() is None
    assert b.spent_exact == 3 * HELLO_COST and b.calls == 3 and len(chat_requests(server)) == 3


async def test_bound_handler_async(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    server.stream_usage = "final"
    b = budget(max_usd=1, price_per_1k_tokens=prices)
    handler = BudgetCallbackHandler(budget=b)
    await make_llm(handler).achat(HELLO)
    chunks = [r async for r in await make_llm(handler).astream_chat(HELLO)]
    await settled(b, 2)
    assert len(chunks) == NUM_OUTPUT - 1 and current_budget() is None
    assert b.spent_exact == 2 * HELLO_COST and len(chat_requests(server)) == 2


def test_bound_handler_in_a_query_engine_and_its_cap(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, max_llm_calls=2, price_per_1k_tokens=prices)
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler(budget=b)])
    engine = query_engine(make_llm())
    engine.query("What are transformers?")
    engine.query("What does a budget do?")
    with pytest.raises(BudgetExceededError) as refused:
        engine.query("Why?")
    assert refused.value.reason == "calls"
    first, second = chat_requests(server)
    assert b.spent_exact == server_cost(first) + server_cost(second) and b.calls == 2


def test_bound_handler_charges_a_budget_nested_in_its_own(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    llm = make_llm(BudgetCallbackHandler(budget=b))
    with b, budget(name="task") as task:
        llm.chat(HELLO)
    assert task.spent_exact == b.spent_exact == HELLO_COST


def test_bound_budget_used_inside_other_budgets_stays_where_it_is(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, name="llm", price_per_1k_tokens=prices)
    llm = make_llm(BudgetCallbackHandler(budget=b))
    with budget(name="request-1") as first:
        llm.chat(HELLO)
    with budget(name="request-2") as second:
        llm.chat(HELLO)  # a second request: no "re-entered under another budget" error
    assert b.parent is None
    assert b.spent_exact == 2 * HELLO_COST and b.calls == 2
    assert first.calls == second.calls == 0
    assert len(chat_requests(server)) == 2


def test_bound_handler_rejects_what_is_not_a_budget() -> None:
    with pytest.raises(TypeError, match="shekel budget"):
        BudgetCallbackHandler(budget=1.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the class patch
def test_install_is_idempotent_and_uninstall_restores_the_originals() -> None:
    originals = {name: HuggingFaceInferenceAPI.__dict__[name] for name in ("chat", "astream_chat")}
    assert llamaindex.install() and llamaindex.install()
    patched = HuggingFaceInferenceAPI.__dict__["chat"]
    assert patched is not originals["chat"] and patched.__shekel_original__ is originals["chat"]
    llamaindex.uninstall()
    llamaindex.uninstall()
    assert {name: HuggingFaceInferenceAPI.__dict__[name] for name in originals} == originals


# ------------------------------------------------------------------ events of Hugging Face LLMs
def test_llm_events_of_huggingface_llms_are_left_to_the_adapter(prices: dict[str, float]) -> None:
    manager = CallbackManager([BudgetCallbackHandler()])
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        event_id = manager.on_event_start(
            CBEventType.LLM,
            payload={
                EventPayload.MESSAGES: HELLO,
                EventPayload.SERIALIZED: {"class_name": "HuggingFaceInferenceAPI", "model_name": "m"},
            },
        )
        assert b.reserved == 0
        manager.on_event_end(CBEventType.LLM, payload={}, event_id=event_id)
    assert b.calls == 0


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "shekel.integrations.llamaindex")
    monkeypatch.setitem(sys.modules, "llama_index.core.callbacks", None)
    with pytest.raises(ImportError, match=r'pip install "shekel\[llamaindex\]"'):
        import shekel.integrations.llamaindex  # noqa: F401


# ------------------------------------------------------------------ chat engines and agents
def test_chat_engine(make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    documents = [Document(text="A budget stops LLM spending at a hard cap.")]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_chat_engine(chat_mode="context", llm=make_llm())
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        assert str(engine.chat("What does a budget do?")) == REPLY
        assert "".join(engine.stream_chat("And then?").response_gen) == REPLY
    first, second = chat_requests(server)
    assert b.spent_exact == server_cost(first) + server_cost(second) and b.calls == 2
    # The engine's default memory keeps its chat in an in-memory SQLite database behind an async SQLAlchemy
    # engine, whose aiosqlite connection nothing closes; dispose of it on the loop LlamaIndex ran it on.
    asyncio_run(engine._memory.sql_store._async_engine.dispose())


def react_agent(llm: HuggingFaceInferenceAPI) -> Any:
    from llama_index.core.agent.workflow import ReActAgent

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    return ReActAgent(tools=[add], llm=llm)


AGENT_REPLY = "Thought: I can answer without using any tools. Answer: 42 (spoken)"


async def test_agent_step(make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]) -> None:
    server.reply, server.stream_usage = AGENT_REPLY, "final"
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    agent = react_agent(make_llm(num_output=50))
    async with budget(max_usd=10, price_per_1k_tokens=prices) as b:
        # astream_chat drops the text of the chunk with finish_reason, with or without shekel.
        assert str(await agent.run("What is 40 plus 2?")) == "42"
    (body,) = chat_requests(server)
    assert body["stream"] and body["max_tokens"] == 50
    assert b.spent_exact == cost(prompt_tokens_of(body["messages"]), len(AGENT_REPLY.split()))
    assert b.calls == 1 and b.estimated_calls == 0


async def test_agent_stopped_before_its_request(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    server.reply = AGENT_REPLY
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
    agent = react_agent(make_llm(num_output=50))
    async with budget(max_usd=0.05, price_per_1k_tokens=prices) as b:
        with pytest.raises(BudgetExceededError):
            await agent.run("What is 40 plus 2?")
    assert server.request_count == 0 and b.calls == 0 and b.reserved == 0
