"""Runs the BudgetCallbackHandler charges itself are charged by the core's rules, not a copy of them.

With shekel's Hugging Face adapter uninstalled, only the handler counts. Its estimates (prompt from the
messages, read once; output from what was streamed or returned, at most ``max_tokens``) are the core's:
``shekel._usage.prompt_tokens_estimates`` and ``shekel._call.CallAccounting``. Real langchain-core and
langchain-huggingface objects, over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint

import shekel
import shekel.integrations.langchain as integration
from shekel import Budget, budget
from shekel._usage import prompt_tokens_estimates, text_tokens_fair
from shekel.integrations.langchain import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer

PRICES = {"input": 1.0, "output": 2.0}
WORDS = 5


@pytest.fixture
def b() -> Iterator[Budget]:
    """A budget only the handler charges: the adapter is uninstalled for the test, once its handler exists."""
    charged = budget(max_usd=1, price_per_1k_tokens=PRICES)
    handlers[charged] = BudgetCallbackHandler(budget=charged)  # creating it installs the adapter
    shekel.uninstall()
    try:
        yield charged
    finally:
        shekel.install()
        del handlers[charged]


handlers: dict[Budget, BudgetCallbackHandler] = {}


def bound(b: Budget) -> RunnableConfig:
    return {"callbacks": [handlers[b]]}


HELLO_FAIR = prompt_tokens_estimates([HumanMessage(content="hello there")])[1]


def test_a_chat_runs_prompt_is_read_once(
    chat: ChatHuggingFace, b: Budget, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Any] = []

    def counted(messages: Any, tools: object = None) -> tuple[int, int]:
        reads.append(messages)
        return prompt_tokens_estimates(messages, tools)

    monkeypatch.setattr(integration, "prompt_tokens_estimates", counted)
    chat.invoke("hello there", config=bound(b))
    assert len(reads) == 1
    (record,) = b.records
    assert not record.estimated, "the usage LangChain returned"


def test_a_stream_without_usage_is_estimated_by_the_cores_rule(chat: ChatHuggingFace, b: Budget) -> None:
    with pytest.warns(UserWarning, match="charges its calls by estimate"):
        chunks = list(chat.stream("hello there", config=bound(b)))
    (record,) = b.records
    assert record.source == "langchain" and record.estimated and record.streamed
    assert record.input_tokens == HELLO_FAIR
    assert record.output_tokens == WORDS == sum(1 for c in chunks if c.content)
    assert b.reserved == 0 and b.calls_in_flight == 0


def _long_stream(words: int) -> str:
    events = [
        '{"object":"chat.completion.chunk","id":"","created":0,"model":"m","choices":[{"index":0,'
        f'"delta":{{"role":"assistant","content":"w{i} "}},"finish_reason":null}}]}}'
        for i in range(words)
    ]
    return "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"


def test_an_estimate_is_at_most_max_tokens(
    chat: ChatHuggingFace, b: Budget, server: FakeInferenceServer
) -> None:
    server.respond_next(_long_stream(12), content_type="text/event-stream")
    with pytest.warns(UserWarning, match="charges its calls by estimate"):
        assert len(list(chat.stream("hello there", config=bound(b)))) >= 12
    (record,) = b.records
    assert record.estimated and record.output_tokens == WORDS, "a server cannot generate more than allowed"


def test_a_broken_stream_is_charged_for_what_it_delivered(
    chat: ChatHuggingFace, b: Budget, server: FakeInferenceServer
) -> None:
    server.drop_stream_after(3)
    received = []
    with pytest.raises(httpx.HTTPError), pytest.warns(UserWarning, match="charges its calls by estimate"):
        for chunk in chat.stream("hello there", config=bound(b)):
            received.append(chunk)
    (record,) = b.records
    assert record.estimated and record.input_tokens == HELLO_FAIR
    texts = [str(c.content) for c in received if c.content]
    assert texts, "the connection broke after some chunks were read"
    # one token per chunk, four characters per token, whichever is more; at most max_tokens
    assert record.output_tokens == min(WORDS, max(len(texts), math.ceil(len("".join(texts)) / 4)))
    assert b.reserved == 0 and b.calls_in_flight == 0


def test_a_text_answer_without_usage_is_estimated_from_its_text(llm: HuggingFaceEndpoint, b: Budget) -> None:
    with pytest.warns(UserWarning, match="charges its calls by estimate"):
        answer = llm.invoke("hello there", config=bound(b))
    (record,) = b.records
    assert record.source == "langchain" and record.estimated and not record.streamed
    assert record.input_tokens == text_tokens_fair("hello there")
    # HuggingFaceEndpoint does not pass max_new_tokens to callbacks: nothing to bound the estimate by.
    assert record.output_tokens == math.ceil(len(answer) / 4)


def test_usage_past_max_tokens_is_charged_as_reported_and_flagged(
    chat: ChatHuggingFace, b: Budget, server: FakeInferenceServer
) -> None:
    server.extra_completion_tokens = 20  # the server reports 25 output tokens for max_tokens=5
    chat.invoke("hello there", config=bound(b))
    (record,) = b.records
    assert record.source == "langchain" and not record.estimated
    assert record.output_tokens == WORDS + 20
    assert any("charged as reported" in note for note in record.notes)
