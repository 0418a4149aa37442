"""LangChain's ChatOpenAI and ChatAnthropic, LlamaIndex's OpenAI, OpenAILike and Anthropic: counted once, by the
SDK adapters, reserved before sending, with and without shekel's handlers; real packages over HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest

from shekel import BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

PRICES = {"input": 1.0, "output": 2.0}


def spent_by_server(server: FakeInferenceServer) -> Decimal:
    return sum(
        (
            Decimal("0.001") * (r.input_tokens or 0) + Decimal("0.002") * (r.output_tokens or 0)
            for r in server.requests
        ),
        Decimal(0),
    )


# ------------------------------------------------------------------------------------------ LangChain
@pytest.fixture
def chat_openai(server: FakeInferenceServer) -> Any:
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(model="m", base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
def chat_anthropic(server: FakeInferenceServer) -> Any:
    langchain_anthropic = pytest.importorskip("langchain_anthropic")
    return langchain_anthropic.ChatAnthropic(
        model="claude-x", base_url=server.url, api_key="x", max_tokens=5, max_retries=0
    )


def test_chat_openai_batch_never_passes_the_cap(
    chat_openai: Any, server: FakeInferenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.latency = 0.05
    with caplog.at_level(logging.WARNING), budget(max_usd=0.30, price_per_1k_tokens=PRICES, wait=0) as b:
        with pytest.raises(BudgetExceededError):
            chat_openai.batch(["tell me a story"] * 8, config={"max_concurrency": 8})
    assert b.spent_exact <= Decimal("0.30") and b.reserved == 0
    assert b.calls == server.request_count and b.spent_exact == spent_by_server(server)
    assert "Error in BudgetCallbackHandler" not in caplog.text


@pytest.mark.parametrize("with_handler", [False, True])
def test_langchain_models_are_counted_once(
    chat_openai: Any, chat_anthropic: Any, server: FakeInferenceServer, with_handler: bool
) -> None:
    config: dict[str, Any] = {}
    if with_handler:
        pytest.importorskip("langchain_huggingface")
        from shekel.integrations.langchain import BudgetCallbackHandler

        config = {"callbacks": [BudgetCallbackHandler()]}
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        chat_openai.invoke("hi", config=config)
        "".join(str(c.content) for c in chat_openai.stream("hi", config=config))
        chat_openai.batch(["a", "b"], config=config)
        chat_anthropic.invoke("hi", config=config)
        list(chat_anthropic.stream("hi", config=config))
    assert b.calls == server.request_count == 6
    assert b.spent_exact == spent_by_server(server) and b.reserved == 0


async def test_langchain_async_batch_is_counted_once(chat_openai: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        await chat_openai.abatch(["a", "b", "c"])
        await chat_openai.ainvoke("hi")
    assert b.calls == server.request_count == 4 and b.spent_exact == spent_by_server(server)


def test_a_bound_handler_charges_its_budget(chat_openai: Any, server: FakeInferenceServer) -> None:
    pytest.importorskip("langchain_huggingface")
    from shekel.integrations.langchain import BudgetCallbackHandler

    tenant = budget(max_usd=1, price_per_1k_tokens=PRICES)
    chat_openai.invoke("hi", config={"callbacks": [BudgetCallbackHandler(budget=tenant)]})
    assert tenant.calls == 1 and tenant.spent_exact == spent_by_server(server)


# ------------------------------------------------------------------------------------------ LlamaIndex
def _llamaindex_llms(server: FakeInferenceServer) -> list[Any]:
    llms: list[Any] = []
    openai_llms = pytest.importorskip("llama_index.llms.openai")
    like = pytest.importorskip("llama_index.llms.openai_like")
    li_anthropic = pytest.importorskip("llama_index.llms.anthropic")
    llms.append(
        openai_llms.OpenAI(model="gpt-4o-mini", api_base=server.url + "/v1", api_key="x", max_retries=0)
    )
    llms.append(
        like.OpenAILike(
            model="m", api_base=server.url + "/v1", api_key="x", is_chat_model=True, max_retries=0
        )
    )
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.anthropic.utils import messages_to_anthropic_messages

    try:  # llama-index-llms-anthropic 0.11 cannot build messages for the anthropic 2.x SDK installed here
        messages_to_anthropic_messages([ChatMessage(role="user", content="hi")])
    except TypeError:
        return llms
    llms.append(
        li_anthropic.Anthropic(
            model="claude-3-5-haiku-latest", base_url=server.url, api_key="x", max_tokens=5, max_retries=0
        )
    )
    return llms


@pytest.mark.parametrize("with_handler", [False, True])
def test_llamaindex_llms_are_counted_once(server: FakeInferenceServer, with_handler: bool) -> None:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.callbacks import CallbackManager

    llms = _llamaindex_llms(server)
    if with_handler:
        from shekel.integrations.llamaindex import BudgetCallbackHandler

        for llm in llms:
            llm.callback_manager = CallbackManager([BudgetCallbackHandler()])
    messages = [ChatMessage(role="user", content="hi there")]
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        for llm in llms:
            llm.chat(messages)
            for _ in llm.stream_chat(messages):
                pass
    assert b.calls == server.request_count == 2 * len(llms)
    assert b.spent_exact == spent_by_server(server) and b.reserved == 0


async def test_llamaindex_async_is_counted_once(server: FakeInferenceServer) -> None:
    from llama_index.core.base.llms.types import ChatMessage

    llms = _llamaindex_llms(server)
    messages = [ChatMessage(role="user", content="hi there")]
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        for llm in llms:
            await llm.achat(messages)
            async for _ in await llm.astream_chat(messages):
                pass
    assert b.calls == server.request_count == 2 * len(llms)
    assert b.spent_exact == spent_by_server(server) and b.reserved == 0


def test_llamaindex_refuses_before_sending(server: FakeInferenceServer) -> None:
    from llama_index.core.base.llms.types import ChatMessage

    llm = _llamaindex_llms(server)[1]
    with budget(max_usd=0.01, price_per_1k_tokens=PRICES), pytest.raises(BudgetExceededError):
        llm.chat([ChatMessage(role="user", content="hi there")])
    assert server.request_count == 0
