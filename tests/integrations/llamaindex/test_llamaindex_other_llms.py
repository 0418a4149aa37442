"""LLMs other than HuggingFaceInferenceAPI, counted from their LlamaIndex LLM events.

``ServerLLM`` is a LlamaIndex ``CustomLLM`` that talks to the local server over real HTTP with httpx and
reports the server's usage in ``raw``, as LlamaIndex's OpenAI-style LLMs do.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import ChatMessage, CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback

from shekel import BudgetExceededError, budget
from shekel._usage import prompt_tokens_fair
from shekel.integrations.llamaindex import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer, prompt_tokens_of

from .conftest import NUM_OUTPUT, cost

PROMPT = "hello there"  # the server counts 2 words + 3 for the message = 5 prompt tokens
PROMPT_COST = cost(5, NUM_OUTPUT)


class ServerLLM(CustomLLM):
    url: str
    #: Where the response reports usage: "raw" (OpenAI names), "anthropic" (raw, Anthropic names),
    #: "additional_kwargs", or "none".
    usage_in: str = "raw"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(num_output=NUM_OUTPUT, model_name="server-llm")

    def _body(self, prompt: str, **extra: Any) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": prompt}], "max_tokens": NUM_OUTPUT, **extra}

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        answer = (
            httpx.post(f"{self.url}/v1/chat/completions", json=self._body(prompt)).raise_for_status().json()
        )
        text = answer["choices"][0]["message"]["content"]
        usage = answer.pop("usage")
        if self.usage_in == "raw":
            answer["usage"] = usage
        elif self.usage_in == "anthropic":
            answer["usage"] = {
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage["completion_tokens"],
            }
        elif self.usage_in == "additional_kwargs":
            return CompletionResponse(text=text, raw=answer, additional_kwargs=usage)
        return CompletionResponse(text=text, raw=answer)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> Iterator[CompletionResponse]:
        body = self._body(prompt, stream=True, stream_options={"include_usage": True})

        def gen() -> Iterator[CompletionResponse]:
            text = ""
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: ") :])
                    delta = chunk["choices"][0]["delta"]["content"] if chunk["choices"] else ""
                    text += delta
                    yield CompletionResponse(text=text, delta=delta, raw=chunk)

        return gen()


@pytest.fixture
def llm(server: FakeInferenceServer) -> ServerLLM:
    return ServerLLM(url=server.url, callback_manager=CallbackManager([BudgetCallbackHandler()]))


@pytest.mark.parametrize("usage_in", ["raw", "anthropic", "additional_kwargs"])
def test_complete_is_charged_at_the_reported_usage(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float], usage_in: str
) -> None:
    llm.usage_in = usage_in
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        llm.complete(PROMPT)
    assert b.spent_exact == PROMPT_COST and b.calls == 1 and b.estimated_calls == 0
    (record,) = b.records
    assert (record.model, record.source) == ("server-llm", "llamaindex.llm_event")
    assert server.request_count == 1


def test_chat_calling_complete_is_counted_once(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    # CustomLLM.chat emits an LLM event and calls complete, which emits another one for the same request.
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        llm.chat([ChatMessage(role="user", content=PROMPT)])
        llm.complete(PROMPT)
    assert server.request_count == 2
    spent = sum(cost(prompt_tokens_of(r.body["messages"]), NUM_OUTPUT) for r in server.requests)
    assert b.calls == 2 and b.spent_exact == spent and b.reserved == 0


def test_stream_is_charged_at_its_last_usage(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        chunks = list(llm.stream_complete(PROMPT))
    assert chunks[-2].text == "Transformers are neural networks that"
    assert b.spent_exact == PROMPT_COST and b.records[0].streamed


def test_a_later_call_beside_an_unfinished_stream_is_counted(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        stream = llm.stream_complete(PROMPT)
        next(stream)
        # Neither is nested in the stream's event, though that event is still open.
        llm.complete(PROMPT)
        llm.chat([ChatMessage(role="user", content=PROMPT)])
        assert b.calls == 2
        stream.close()  # abandoned: charged at an estimate
    assert server.request_count == 3
    assert b.calls == 3 and b.reserved == 0 and b.estimated_calls == 1


async def test_concurrent_calls_are_each_counted(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        await asyncio.gather(*(llm.acomplete(PROMPT) for _ in range(4)))
    assert server.request_count == 4
    assert b.calls == 4 and b.spent_exact == 4 * PROMPT_COST


def test_refused_before_the_request(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    with budget(max_usd=0.01, price_per_1k_tokens=prices) as b, pytest.raises(BudgetExceededError) as refused:
        llm.complete(PROMPT)
    assert server.request_count == 0
    assert refused.value.model == "server-llm"
    assert b.calls == 0 and b.reserved == 0


def test_failed_call_costs_nothing(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    server.fail_next(500)
    with budget(max_usd=1, price_per_1k_tokens=prices) as b, pytest.raises(httpx.HTTPStatusError):
        llm.complete(PROMPT)
    assert server.request_count == 1
    assert (b.calls, b.spent_exact, b.reserved) == (0, 0, 0)


def test_no_reported_usage_is_estimated(server: FakeInferenceServer, prices: dict[str, float]) -> None:
    llm = ServerLLM(
        url=server.url, usage_in="none", callback_manager=CallbackManager([BudgetCallbackHandler()])
    )
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        llm.complete(PROMPT)
    (record,) = b.records
    # 11 bytes of prompt / 4, rounded up; 37 characters of answer / 4 = 10, at most the LLM's num_output.
    assert (record.input_tokens, record.output_tokens, record.estimated) == (3, NUM_OUTPUT, True)
    assert b.spent_exact == cost(3, NUM_OUTPUT)


def test_bound_handler(server: FakeInferenceServer, prices: dict[str, float]) -> None:
    b = budget(max_usd=1, price_per_1k_tokens=prices)
    llm = ServerLLM(url=server.url, callback_manager=CallbackManager([BudgetCallbackHandler(budget=b)]))
    llm.complete(PROMPT)
    assert b.spent_exact == PROMPT_COST


def test_outside_any_budget_nothing_is_counted(llm: ServerLLM, server: FakeInferenceServer) -> None:
    assert llm.complete(PROMPT).text == "Transformers are neural networks that"
    assert server.request_count == 1


def test_two_handlers_in_one_manager_count_once(
    server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    manager = CallbackManager([BudgetCallbackHandler(), BudgetCallbackHandler()])
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        ServerLLM(url=server.url, callback_manager=manager).complete(PROMPT)
    assert b.calls == 1 and b.spent_exact == PROMPT_COST


# ------------------------------------------------------------------ streams that do not run to their end
def delivered_cost(text: str, chunks: int) -> Any:
    """What a stream is charged for what it handed over: 3 prompt tokens (11 bytes / 4, rounded up) and
    one token per chunk or per 4 characters, whichever is more, at most the LLM's num_output."""
    return cost(3, min(NUM_OUTPUT, max(chunks, math.ceil(len(text) / 4))))


def test_stream_dropped_before_it_is_read_holds_nothing(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    with budget(max_usd=1, max_llm_calls=1, price_per_1k_tokens=prices) as b:
        stream = llm.stream_complete(PROMPT)
        assert b.reserved > 0
        del stream
        gc.collect()
        assert (b.reserved, b.calls, b.spent_exact) == (0, 0, 0)
        # Its in-flight slot was given back too: the one call max_llm_calls allows can still be made.
        llm.complete(PROMPT)
    assert server.request_count == 1  # the dropped stream never sent its request
    assert b.calls == 1 and b.spent_exact == PROMPT_COST


@pytest.mark.parametrize("method", ["stream_complete", "stream_chat"])
def test_stream_abandoned_part_way_is_charged_for_what_it_delivered(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float], method: str
) -> None:
    llm.usage_in = "none"  # the usage rides on the last chunk, which the reader never takes
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        if method == "stream_complete":
            stream: Any = llm.stream_complete(PROMPT)
        else:
            stream = llm.stream_chat([ChatMessage(role="user", content=PROMPT)])
        first, second = next(stream), next(stream)
        stream.close()
    text = second.text if method == "stream_complete" else second.message.content
    assert text == "Transformers are" and first.delta == "Transformers"
    (record,) = b.records
    assert record.estimated and record.streamed and record.output_tokens == 4
    if method == "stream_complete":
        assert b.spent_exact == delivered_cost(text, 2)
    else:  # the prompt is estimated from the chat message
        assert record.input_tokens == prompt_tokens_fair([{"role": "user", "content": PROMPT}])
        assert b.spent_exact == cost(record.input_tokens, 4)
    assert b.reserved == 0 and b.calls == 1


def test_stream_abandoned_and_collected_is_charged_for_what_it_delivered(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        stream = llm.stream_complete(PROMPT)
        text = [next(stream).text for _ in range(3)][-1]
        del stream
        gc.collect()
    assert b.calls == 1 and b.reserved == 0 and b.estimated_calls == 1
    assert b.spent_exact == delivered_cost(text, 3)


async def test_async_streams_dropped_or_abandoned(
    llm: ServerLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    async with budget(max_usd=1, max_llm_calls=2, price_per_1k_tokens=prices) as b:
        dropped = await llm.astream_chat([ChatMessage(role="user", content=PROMPT)])
        del dropped
        gc.collect()
        assert (b.reserved, b.calls) == (0, 0)
        stream = await llm.astream_chat([ChatMessage(role="user", content=PROMPT)])
        first = await stream.__anext__()
        await stream.aclose()
    assert server.request_count == 1  # the dropped stream never sent its request
    assert first.message.content == "Transformers"
    # One call (CustomLLM.astream_chat reads stream_complete from its stream: the same call), charged for
    # the one chunk it delivered.
    (record,) = b.records
    assert (record.output_tokens, record.estimated) == (3, True)  # 12 characters / 4
    assert b.calls == 1 and b.reserved == 0
