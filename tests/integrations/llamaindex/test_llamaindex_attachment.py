"""Where a bound ``BudgetCallbackHandler`` can be attached, and what each attachment charges.

Every form is run through real LlamaIndex engines and ``HuggingFaceInferenceAPI`` over HTTP to the local
server: ``Settings.callback_manager``, the engine's ``callback_manager``, the LLM's ``callback_manager``; with no
budget around the call and inside an unrelated one; sync and async, with and without streaming. Each query or
chat makes exactly one request, which must be charged once, to the bound budget, and to nothing else.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.async_utils import asyncio_run
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.callbacks import CallbackManager
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.llms.huggingface_api import HuggingFaceInferenceAPI

from shekel import Budget, BudgetExceededError, budget, current_budget
from shekel.integrations import llamaindex
from shekel.integrations.llamaindex import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer, prompt_tokens_of

from .conftest import cost
from .test_llamaindex_handler import REPLY, chat_requests, server_cost

MakeLLM = Callable[..., HuggingFaceInferenceAPI]
FORMS = ["settings", "engine", "llm"]
QUERY_OPS = ["query", "aquery", "stream", "astream"]
ENCLOSING = ["none", "unrelated", "bound"]


def index() -> VectorStoreIndex:
    documents = [
        Document(text="Transformers weigh every token against every other token with attention."),
        Document(text="A budget stops LLM spending at a hard cap."),
    ]
    return VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))


def query_engine_for(form: str, make_llm: MakeLLM, handler: BudgetCallbackHandler, streaming: bool) -> Any:
    """A query engine with the handler attached the way ``form`` says, built the usual way for that form."""
    if form == "settings":
        Settings.callback_manager = CallbackManager([handler])
        return index().as_query_engine(llm=make_llm(), streaming=streaming)
    if form == "engine":
        retriever = index().as_retriever()
        manager = CallbackManager([handler])
        return RetrieverQueryEngine.from_args(
            retriever, llm=make_llm(), callback_manager=manager, streaming=streaming
        )
    # The LLM's own manager: LlamaIndex replaces it while it builds the engine (resolve_llm, the synthesizer).
    return index().as_query_engine(llm=make_llm(handler), streaming=streaming)


def chat_engine_for(form: str, make_llm: MakeLLM, handler: BudgetCallbackHandler, mode: str) -> Any:
    """A chat engine (``simple`` or ``context``) with the handler attached the way ``form`` says."""

    def build(llm: HuggingFaceInferenceAPI) -> Any:
        if mode == "simple":
            return SimpleChatEngine.from_defaults(llm=llm)
        return index().as_chat_engine(chat_mode="context", llm=llm)

    if form == "settings":
        Settings.callback_manager = CallbackManager([handler])
        return build(make_llm())
    if form == "engine":
        # The chat engines' from_defaults ignore callback_manager=: the engine's manager is set on the engine.
        engine = build(make_llm())
        engine.callback_manager = CallbackManager([handler])
        return engine
    return build(make_llm(handler))


async def run_query(engine: Any, op: str) -> str:
    if op == "query":
        return str(engine.query("What are transformers?"))
    if op == "aquery":
        return str(await engine.aquery("What are transformers?"))
    if op == "stream":
        return "".join(engine.query("What are transformers?").response_gen)
    response = await engine.aquery("What are transformers?")
    return "".join([token async for token in response.async_response_gen()])


async def settled(b: Budget) -> None:
    # astream_chat leaves the adapter's stream unfinished; the event loop finalises it (no clock involved).
    for _ in range(100):
        if b.reserved == 0 and b.calls:
            return
        await asyncio.sleep(0)


def expected(op: str) -> str:
    # astream_chat stops at the chunk with finish_reason and drops its text, with or without shekel.
    return REPLY.rsplit(" ", 1)[0] if op.startswith("astream") else REPLY


def around(enclosing: str, b: Budget) -> AbstractContextManager[Any]:
    """No budget around the call, an unrelated one (a request's own), or the bound budget itself."""
    if enclosing == "bound":
        return b
    return budget(name="request") if enclosing == "unrelated" else nullcontext()


def assert_charged_once(b: Budget, server: FakeInferenceServer, outer: Budget | None) -> None:
    (body,) = chat_requests(server)
    assert (b.calls, b.reserved) == (1, 0)
    assert b.spent_exact == server_cost(body)
    if outer is not None and outer is not b:
        assert outer.calls == 0 and outer.spent_exact == 0, "the bound budget is charged, not the one around"


# ------------------------------------------------------------------ every form, every way of asking
@pytest.mark.parametrize("enclosing", ENCLOSING)
@pytest.mark.parametrize("op", QUERY_OPS)
@pytest.mark.parametrize("form", FORMS)
async def test_query_engines_charge_the_bound_budget(
    form: str,
    op: str,
    enclosing: str,
    make_llm: MakeLLM,
    server: FakeInferenceServer,
    prices: dict[str, float],
) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    engine = query_engine_for(
        form, make_llm, BudgetCallbackHandler(budget=b), streaming=op.endswith("stream")
    )
    with around(enclosing, b) as outer:
        assert (await run_query(engine, op)).strip() == expected(op)
        await settled(b)
        assert current_budget() is outer
    assert_charged_once(b, server, outer)


def dispose_memory(engine: Any) -> Any:
    """The chat engine's default memory keeps the chat in an in-memory SQLite database behind an async
    SQLAlchemy engine whose aiosqlite connection nothing closes: what disposes of it (to await, or to run with
    LlamaIndex's asyncio_run where LlamaIndex ran it)."""
    return engine._memory.sql_store._async_engine.dispose()


@pytest.mark.parametrize("enclosing", ENCLOSING)
@pytest.mark.parametrize("op", ["chat", "stream_chat"])
@pytest.mark.parametrize("mode", ["simple", "context"])
@pytest.mark.parametrize("form", FORMS)
def test_chat_engines_charge_the_bound_budget(
    form: str,
    mode: str,
    op: str,
    enclosing: str,
    make_llm: MakeLLM,
    server: FakeInferenceServer,
    prices: dict[str, float],
) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    engine = chat_engine_for(form, make_llm, BudgetCallbackHandler(budget=b), mode)
    with around(enclosing, b) as outer:
        if op == "chat":
            text = str(engine.chat("What does a budget do?"))
        else:
            text = "".join(engine.stream_chat("What does a budget do?").response_gen)
        assert current_budget() is outer
    assert text.strip() == REPLY
    assert_charged_once(b, server, outer)
    asyncio_run(dispose_memory(engine))


@pytest.mark.parametrize("enclosing", ENCLOSING)
@pytest.mark.parametrize("op", ["achat", "astream_chat"])
@pytest.mark.parametrize("mode", ["simple", "context"])
@pytest.mark.parametrize("form", FORMS)
async def test_chat_engines_charge_the_bound_budget_async(
    form: str,
    mode: str,
    op: str,
    enclosing: str,
    make_llm: MakeLLM,
    server: FakeInferenceServer,
    prices: dict[str, float],
) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    engine = chat_engine_for(form, make_llm, BudgetCallbackHandler(budget=b), mode)
    with around(enclosing, b) as outer:
        if op == "achat":
            text = str(await engine.achat("What does a budget do?"))
        else:
            response = await engine.astream_chat("What does a budget do?")
            text = "".join([token async for token in response.async_response_gen()])
        await settled(b)
        assert current_budget() is outer
    assert text.strip() == expected(op)
    assert_charged_once(b, server, outer)
    await dispose_memory(engine)


@pytest.mark.parametrize("form", FORMS)
def test_the_bound_cap_stops_the_next_query_before_its_request(
    form: str, make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, max_llm_calls=1, name="team", price_per_1k_tokens=prices)
    engine = query_engine_for(form, make_llm, BudgetCallbackHandler(budget=b), streaming=False)
    engine.query("What are transformers?")
    with pytest.raises(BudgetExceededError) as refused:
        engine.query("What does a budget do?")
    assert refused.value.reason == "calls" and refused.value.budget_name == "team"
    assert server.request_count == 1 and b.calls == 1 and b.reserved == 0
    assert current_budget() is None


def test_a_nested_budget_inside_the_bound_one_is_charged_and_passes_it_on(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    team = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    engine = query_engine_for("engine", make_llm, BudgetCallbackHandler(budget=team), streaming=True)
    with team, budget(name="task") as task:
        "".join(engine.query("What are transformers?").response_gen)
    (body,) = chat_requests(server)
    assert task.spent_exact == team.spent_exact == server_cost(body)
    assert task.calls == team.calls == 1


# ------------------------------------------------------------------ counted once
@pytest.mark.parametrize("where", ["settings", "engine"])
def test_the_same_budget_bound_twice_is_charged_once(
    where: str, make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, price_per_1k_tokens=prices)
    llm = make_llm(BudgetCallbackHandler(budget=b))
    if where == "settings":
        Settings.callback_manager = CallbackManager([BudgetCallbackHandler(budget=b)])
        engine = index().as_query_engine(llm=llm)
    else:
        manager = CallbackManager([BudgetCallbackHandler(budget=b)])
        engine = RetrieverQueryEngine.from_args(index().as_retriever(), llm=llm, callback_manager=manager)
    with budget(name="request") as outer:
        engine.query("What are transformers?")
    assert_charged_once(b, server, outer)


def test_the_llms_own_handler_wins_over_the_engines(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    team = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    org = budget(max_usd=1, name="org", price_per_1k_tokens=prices)
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler(budget=org)])
    engine = index().as_query_engine(llm=make_llm(BudgetCallbackHandler(budget=team)))
    engine.query("What are transformers?")
    assert_charged_once(team, server, org)


# ------------------------------------------------------------------ the LLM keeps its handlers
def test_llamaindex_replacing_an_llms_manager_keeps_its_budget_handlers(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, price_per_1k_tokens=prices)
    handler, other = BudgetCallbackHandler(budget=b), BudgetCallbackHandler()
    llm = make_llm(handler)
    Settings.callback_manager = CallbackManager([other])
    engine = index().as_query_engine(llm=llm)  # resolve_llm and the synthesizer give the LLM other managers
    assert llm.callback_manager.handlers == [handler, other]
    assert Settings.callback_manager.handlers == [other], "the shared manager itself is left alone"
    engine.query("What are transformers?")
    assert_charged_once(b, server, None)


def test_the_application_replacing_an_llms_manager_is_obeyed(make_llm: MakeLLM) -> None:
    llm = make_llm(BudgetCallbackHandler(budget=budget(max_usd=1, name="dropped")))
    bare = CallbackManager([])
    with pytest.warns(UserWarning, match="budget 'dropped' was discarded"):
        llm.callback_manager = bare  # the handler was never called: its end says so
        gc.collect()
    assert llm.callback_manager is bare and bare.handlers == []


def test_install_patches_base_llm_once_and_uninstall_removes_it() -> None:
    assert "__setattr__" not in BaseLLM.__dict__
    assert llamaindex.install() and llamaindex.install()
    patched = BaseLLM.__dict__["__setattr__"]
    assert llamaindex.install() and BaseLLM.__dict__["__setattr__"] is patched
    llamaindex.uninstall()
    llamaindex.uninstall()
    assert "__setattr__" not in BaseLLM.__dict__


def test_uninstall_leaves_a_wrapper_put_on_top_of_ours() -> None:
    import functools

    llamaindex.install()
    ours = BaseLLM.__dict__["__setattr__"]

    @functools.wraps(ours)  # copies our attributes, __shekel_original__ included
    def theirs(self: Any, name: str, value: Any) -> None:
        ours(self, name, value)

    BaseLLM.__setattr__ = theirs  # type: ignore[method-assign]
    try:
        llamaindex.uninstall()
        assert BaseLLM.__dict__["__setattr__"] is theirs, "another library's wrapper is left in place"
        llamaindex.install()
        assert BaseLLM.__dict__["__setattr__"] is theirs, "and ours, still under it, is not installed twice"
    finally:
        BaseLLM.__setattr__ = ours  # type: ignore[method-assign]
        llamaindex.uninstall()
    assert "__setattr__" not in BaseLLM.__dict__


# ------------------------------------------------------------------ forms that cannot work say so
def test_a_handler_dropped_by_a_from_defaults_warns(make_llm: MakeLLM, prices: dict[str, float]) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    with pytest.warns(UserWarning, match=r"budget 'team'.*callback_manager=.*LLM") as warned:
        engine = SimpleChatEngine.from_defaults(
            llm=make_llm(), callback_manager=CallbackManager([BudgetCallbackHandler(budget=b)])
        )
        gc.collect()
    (mine,) = [w for w in warned if "budget 'team'" in str(w.message)]
    assert mine.filename == __file__, "blamed on the line that dropped it"
    asyncio_run(dispose_memory(engine))


def test_used_handlers_do_not_warn_when_dropped(
    make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float], recwarn: pytest.WarningsRecorder
) -> None:
    b = budget(max_usd=1, price_per_1k_tokens=prices)
    make_llm(BudgetCallbackHandler(budget=b)).complete("hello there")
    gc.collect()
    assert not [w for w in recwarn if "BudgetCallbackHandler" in str(w.message)]
    assert b.calls == 1


# ------------------------------------------------------------------ LLMs counted from their LLM events
def server_llm_engine(server: FakeInferenceServer, handler: BudgetCallbackHandler, **kwargs: Any) -> Any:
    from .test_llamaindex_other_llms import ServerLLM

    retriever = index().as_retriever()
    llm = ServerLLM(url=server.url)  # its manager: the Settings one it finds when it is built
    return RetrieverQueryEngine.from_args(
        retriever, llm=llm, callback_manager=CallbackManager([handler]), **kwargs
    )


@pytest.mark.parametrize("streaming", [False, True])
def test_an_engine_handler_charges_an_llm_counted_by_a_settings_handler(
    streaming: bool, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])  # counts LLM events
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    engine = server_llm_engine(server, BudgetCallbackHandler(budget=b), streaming=streaming)
    with budget(name="request") as outer:
        response = engine.query("What are transformers?")
        text = "".join(response.response_gen) if streaming else str(response)
    assert text.strip() == REPLY
    (record,) = b.records
    assert record.source == "llamaindex.llm_event" and not record.estimated
    assert_charged_once(b, server, outer)


def test_an_llm_whose_events_nobody_sees_is_named_in_a_warning(
    server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    engine = server_llm_engine(server, BudgetCallbackHandler(budget=b))
    with pytest.warns(UserWarning, match=r"budget='team'.*ServerLLM.*Settings\.callback_manager") as warned:
        engine.query("What are transformers?")
        engine.query("What does a budget do?")
    (mine,) = [w for w in warned if "ServerLLM" in str(w.message)]  # once per handler and LLM class
    assert mine.filename == __file__
    assert server.request_count == 2 and b.calls == 0


def test_that_warning_turned_error_leaves_nothing_active(
    server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    engine = server_llm_engine(server, BudgetCallbackHandler(budget=b))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        # Inside another manager's trace the engine's handler sees no trace of its own: only the query event.
        with CallbackManager([]).as_trace("outer"), pytest.raises(UserWarning, match="ServerLLM"):
            engine.query("What are transformers?")
    assert current_budget() is None
    assert llamaindex._scopes.get() == () and not llamaindex._event_scopes


def test_an_engine_handler_and_an_llm_on_inference_client_count_once(
    server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    from .test_llamaindex_hub_llms import ADAPTER, HubLLM

    b = budget(max_usd=1, name="team", price_per_1k_tokens=prices)
    llm = HubLLM(url=server.url, callback_manager=CallbackManager([BudgetCallbackHandler()]))
    manager = CallbackManager([BudgetCallbackHandler(budget=b)])
    engine = RetrieverQueryEngine.from_args(index().as_retriever(), llm=llm, callback_manager=manager)
    with budget(name="request") as outer:
        engine.query("What are transformers?")
    assert [r.source for r in b.records] == [ADAPTER]
    assert_charged_once(b, server, outer)


# ------------------------------------------------------------------ agents
AGENT_REPLY = "Thought: I can answer without using any tools. Answer: 42 (spoken)"


@pytest.mark.parametrize("enclosing", ["none", "unrelated"])
@pytest.mark.parametrize("form", ["settings", "llm"])
async def test_agents_charge_the_bound_budget(
    form: str, enclosing: str, make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    from .test_llamaindex_handler import react_agent

    server.reply, server.stream_usage = AGENT_REPLY, "final"
    b = budget(max_usd=10, name="team", price_per_1k_tokens=prices)
    handler = BudgetCallbackHandler(budget=b)
    if form == "settings":
        Settings.callback_manager = CallbackManager([handler])
        agent = react_agent(make_llm(num_output=50))
    else:
        agent = react_agent(make_llm(handler, num_output=50))
    with around(enclosing, b) as outer:
        assert str(await agent.run("What is 40 plus 2?")) == "42"
        await settled(b)
    (body,) = chat_requests(server)
    assert (b.calls, b.reserved, b.estimated_calls) == (1, 0, 0)
    assert b.spent_exact == cost(prompt_tokens_of(body["messages"]), len(AGENT_REPLY.split()))
    assert outer is None or outer.calls == 0


@pytest.mark.parametrize("form", ["settings", "llm"])
async def test_the_bound_cap_stops_an_agent_before_its_request(
    form: str, make_llm: MakeLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    from .test_llamaindex_handler import react_agent

    server.reply = AGENT_REPLY
    b = budget(max_usd=0.05, name="team", price_per_1k_tokens=prices)
    handler = BudgetCallbackHandler(budget=b)
    if form == "settings":
        Settings.callback_manager = CallbackManager([handler])
        agent = react_agent(make_llm(num_output=50))
    else:
        agent = react_agent(make_llm(handler, num_output=50))
    with budget(name="request"), pytest.raises(BudgetExceededError) as refused:
        await agent.run("What is 40 plus 2?")
    assert refused.value.budget_name == "team"
    assert server.request_count == 0 and b.calls == 0 and b.reserved == 0
