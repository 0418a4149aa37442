"""LangGraph graphs and agents under a budget, with real langgraph, langchain-huggingface and HTTP on 127.0.0.1.

A ``StateGraph`` whose node calls ``ChatHuggingFace``, and LangGraph's prebuilt ReAct agent with a tool, run
with the handler attached every way the docs show: in the run's config, in the model's constructor,
through ``with_config``, and as the automatic handler of ``with budget()``; sync and async, plain and
streamed. Each request is charged once, to the right budget, and a budget stops a looping graph or agent
at its cap with ``BudgetExceededError`` before the request that would pass it.

Prices are $0.001 per input token and $0.002 per output token. The local server counts a chat prompt as its
words + 3 per message; the agent's scripted answers report 20 input and 10 output tokens ($0.04 each).
"""

from __future__ import annotations

import json
import warnings
from contextlib import AbstractContextManager, nullcontext
from decimal import Decimal
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")
pytest.importorskip("langgraph")

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import tool
from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint
from langgraph.graph import END, START, MessagesState, StateGraph

from shekel import Budget, BudgetExceededError, budget, current_budget
from shekel.integrations.langchain import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer

PRICES = {"input": 1.0, "output": 2.0}
HELLO = Decimal("0.015")  # "hello there": 5 input tokens, 5 output tokens
TOOL_CALL = Decimal("0.04")  # a scripted tool call: 20 input tokens, 10 output tokens
WORDS = 5
#: How the handler is attached. "with" is the automatic handler inside ``with b:``; the others bind ``b``.
FORMS = ["config", "constructor", "with_config", "with"]
# A budget entered with `with b:` is itself the enclosing budget: "with" has no unrelated one around it.
FORMS_AND_ENCLOSINGS = [
    (form, enclosing)
    for form in FORMS
    for enclosing in ("none", "unrelated")
    if not (form == "with" and enclosing == "unrelated")
]
OPS = ["invoke", "stream", "ainvoke", "astream"]


def react_agent(model: Any, tools: list[Any]) -> Any:
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():  # LangGraph 1.0 moved it to langchain.agents (not installed here)
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_react_agent(model, tools)


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def tool_call(i: int) -> dict[str, Any]:
    return {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "add", "arguments": json.dumps({"a": i, "b": 1})},
    }


def script_tool_calls(server: FakeInferenceServer, n: int, *, streamed: bool) -> None:
    """The next ``n`` answers call the tool again (an agent that never stops by itself), with usage."""
    usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    base = {"object": "chat.completion", "id": "", "created": 0, "model": "m"}
    for i in range(n):
        if not streamed:
            message = {"role": "assistant", "content": "", "tool_calls": [tool_call(i)]}
            answer = {**base, "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
            server.respond_next(json.dumps({**answer, "usage": usage}))
            continue
        chunk = {**base, "object": "chat.completion.chunk"}
        call = {**tool_call(i), "index": 0}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            {**chunk, "choices": [], "usage": usage},
        ]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        server.respond_next(body, content_type="text/event-stream")


def attach(
    form: str, b: Budget, chat: ChatHuggingFace, llm: HuggingFaceEndpoint
) -> tuple[Any, RunnableConfig]:
    """The model to build the graph with and the config to run it with, for ``form``."""
    if form == "constructor":
        return ChatHuggingFace(llm=llm, callbacks=[BudgetCallbackHandler(budget=b)]), {}
    if form == "with_config":
        return chat.with_config({"callbacks": [BudgetCallbackHandler(budget=b)]}), {}
    if form == "config":
        return chat, {"callbacks": [BudgetCallbackHandler(budget=b)]}
    return chat, {}


def around(form: str, b: Budget, enclosing: str) -> AbstractContextManager[Any]:
    if form == "with":
        return b
    return budget(name="request") if enclosing == "unrelated" else nullcontext()


async def run(graph: Runnable[Any, Any], op: str, inputs: Any, config: RunnableConfig) -> None:
    if op == "invoke":
        graph.invoke(inputs, config)
    elif op == "ainvoke":
        await graph.ainvoke(inputs, config)
    elif op == "stream":
        for _ in graph.stream(inputs, config, stream_mode="messages"):
            pass
    else:
        async for _ in graph.astream(inputs, config, stream_mode="messages"):
            pass


# ------------------------------------------------------------------------------------------ a StateGraph
def one_call_graph(model: Runnable[Any, Any]) -> Any:
    # The node passes its config on: async nodes need it on Python 3.10, where LangGraph cannot carry the
    # run's config into the model call by itself.
    def respond(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], config)]}

    async def arespond(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"], config)]}

    builder = StateGraph(MessagesState)
    builder.add_node("respond", respond, afunc=arespond)  # type: ignore[call-overload]
    builder.add_edge(START, "respond")
    builder.add_edge("respond", END)
    return builder.compile()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("form", "enclosing"), FORMS_AND_ENCLOSINGS)
async def test_a_state_graph_is_charged_once(
    form: str,
    op: str,
    enclosing: str,
    chat: ChatHuggingFace,
    llm: HuggingFaceEndpoint,
    server: FakeInferenceServer,
) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=PRICES)
    model, config = attach(form, b, chat, llm)
    graph = one_call_graph(model)
    with around(form, b, enclosing) as outer:
        await run(graph, op, {"messages": [("user", "hello there")]}, config)
        assert current_budget() is outer
    assert b.calls == server.request_count == 1
    assert b.spent_exact == HELLO and b.reserved == 0
    assert server.requests[0].body["stream"] is op.endswith("stream")
    if outer is not None and outer is not b:
        assert outer.calls == 0 and outer.spent_exact == 0


def looping_graph(model: Runnable[Any, Any]) -> Any:
    """A graph that asks the model again and again: only the budget stops it."""

    def respond(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], config)]}

    async def arespond(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"], config)]}

    builder = StateGraph(MessagesState)
    builder.add_node("respond", respond, afunc=arespond)  # type: ignore[call-overload]
    builder.add_edge(START, "respond")
    builder.add_conditional_edges("respond", lambda state: "respond")
    return builder.compile()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("form", FORMS)
async def test_a_looping_state_graph_is_stopped_at_the_cap(
    form: str, op: str, chat: ChatHuggingFace, llm: HuggingFaceEndpoint, server: FakeInferenceServer
) -> None:
    cap = Decimal("0.25")
    b = budget(max_usd=cap, name="team", price_per_1k_tokens=PRICES)
    model, config = attach(form, b, chat, llm)
    graph = looping_graph(model)
    with around(form, b, "none"), pytest.raises(BudgetExceededError) as stopped:
        await run(graph, op, {"messages": [("user", "hello there")]}, {**config, "recursion_limit": 1000})
    assert stopped.value.budget_name == "team"
    assert b.calls == server.request_count >= 3, "stopped by the budget, before the request it refused"
    assert 0 < b.spent_exact <= cap and b.reserved == 0
    assert all(not r.estimated for r in b.records)
    assert current_budget() is None


# ------------------------------------------------------------------------------------------ a ReAct agent
def agent_for(
    form: str, b: Budget, chat: ChatHuggingFace, llm: HuggingFaceEndpoint
) -> tuple[Any, RunnableConfig]:
    if form == "with_config":
        # On the agent: create_react_agent binds the tools to the model underneath a model.with_config(...)
        # and LangChain drops that binding's config (see the test below).
        return react_agent(chat, [add]).with_config({"callbacks": [BudgetCallbackHandler(budget=b)]}), {}
    model, config = attach(form, b, chat, llm)
    return react_agent(model, [add]), config


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("form", "enclosing"), FORMS_AND_ENCLOSINGS)
async def test_a_react_agent_calling_a_tool_is_stopped_at_the_cap(
    form: str,
    op: str,
    enclosing: str,
    chat: ChatHuggingFace,
    llm: HuggingFaceEndpoint,
    server: FakeInferenceServer,
) -> None:
    script_tool_calls(server, 40, streamed=op.endswith("stream"))
    cap = Decimal("0.5")
    b = budget(max_usd=cap, name="team", price_per_1k_tokens=PRICES)
    agent, config = agent_for(form, b, chat, llm)
    with around(form, b, enclosing) as outer, pytest.raises(BudgetExceededError) as stopped:
        await run(agent, op, {"messages": [("user", "Add forever.")]}, {**config, "recursion_limit": 1000})
    assert stopped.value.budget_name == "team"
    # Each model call is one request, charged once at the usage the server reported; the tool ran between.
    assert b.calls == server.request_count >= 3
    assert b.spent_exact == TOOL_CALL * b.calls <= cap
    assert b.reserved == 0 and not any(r.estimated for r in b.records)
    assert all(body["tools"][0]["function"]["name"] == "add" for body in (r.body for r in server.requests))
    if outer is not None and outer is not b:
        assert outer.calls == 0
    assert current_budget() is None


async def test_a_budget_bound_twice_on_one_agent_is_charged_once(
    llm: HuggingFaceEndpoint, server: FakeInferenceServer
) -> None:
    script_tool_calls(server, 40, streamed=False)
    b = budget(max_usd=0.5, price_per_1k_tokens=PRICES)
    model = ChatHuggingFace(llm=llm, callbacks=[BudgetCallbackHandler(budget=b)])
    agent = react_agent(model, [add])
    with b, pytest.raises(BudgetExceededError):
        await agent.ainvoke(
            {"messages": [("user", "Add forever.")]},
            {"callbacks": [BudgetCallbackHandler(budget=b)], "recursion_limit": 1000},
        )
    assert b.calls == server.request_count >= 3
    assert b.spent_exact == TOOL_CALL * b.calls


def test_the_handler_passed_at_run_time_owns_the_run_over_the_constructors(
    llm: HuggingFaceEndpoint, server: FakeInferenceServer
) -> None:
    team = budget(max_usd=1, name="team", price_per_1k_tokens=PRICES)
    tenant = budget(max_usd=1, name="tenant", price_per_1k_tokens=PRICES)
    model = ChatHuggingFace(llm=llm, callbacks=[BudgetCallbackHandler(budget=team)])
    graph = one_call_graph(model)
    graph.invoke(
        {"messages": [("user", "hello there")]}, {"callbacks": [BudgetCallbackHandler(budget=tenant)]}
    )
    assert (tenant.calls, team.calls, server.request_count) == (1, 0, 1)


def test_a_with_config_model_given_to_create_react_agent_loses_its_callbacks(
    chat: ChatHuggingFace, server: FakeInferenceServer
) -> None:
    """LangChain behaviour the docs warn about: ``bind_tools`` on a ``with_config`` binding binds the model
    underneath and drops the binding's config, callbacks included, so no handler sees the agent's calls."""
    script_tool_calls(server, 2, streamed=False)  # then the server answers in text: the agent is done
    b = budget(max_usd=1, price_per_1k_tokens=PRICES)
    agent = react_agent(chat.with_config({"callbacks": [BudgetCallbackHandler(budget=b)]}), [add])
    agent.invoke({"messages": [("user", "Add twice.")]})
    assert server.request_count == 3 and b.calls == 0
