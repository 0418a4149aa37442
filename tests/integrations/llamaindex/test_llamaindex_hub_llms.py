"""LlamaIndex LLMs of other packages built on ``InferenceClient``: the adapter counts their calls, once.

``HubLLM`` is a LlamaIndex ``CustomLLM`` whose methods call huggingface_hub's ``InferenceClient`` (or
``AsyncInferenceClient``) against the local server, as third-party LlamaIndex LLMs do. The handler sees its
LLM events, the adapter sees its HTTP calls: each request must be counted exactly once, by the adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_completion_callback

from shekel import budget
from shekel.integrations.llamaindex import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer

from .conftest import NUM_OUTPUT, cost

PROMPT = "hello there"  # the server counts 2 words + 3 for the message = 5 prompt tokens
PROMPT_COST = cost(5, NUM_OUTPUT)
ADAPTER = "huggingface_hub.chat_completion"


class HubLLM(CustomLLM):
    url: str

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(num_output=NUM_OUTPUT, model_name="hub-llm")

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        out = InferenceClient(base_url=self.url).chat_completion(
            self._messages(prompt), max_tokens=NUM_OUTPUT
        )
        return CompletionResponse(text=out.choices[0].message.content or "", raw=out)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> Iterator[CompletionResponse]:
        def gen() -> Iterator[CompletionResponse]:
            # The request is sent when the stream is first read, as most LlamaIndex LLMs do.
            client = InferenceClient(base_url=self.url)
            text = ""
            for chunk in client.chat_completion(self._messages(prompt), max_tokens=NUM_OUTPUT, stream=True):
                delta = chunk.choices[0].delta.content or "" if chunk.choices else ""
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        async with AsyncInferenceClient(base_url=self.url) as client:
            out = await client.chat_completion(self._messages(prompt), max_tokens=NUM_OUTPUT)
        return CompletionResponse(text=out.choices[0].message.content or "", raw=out)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        async def gen() -> AsyncIterator[CompletionResponse]:
            async with AsyncInferenceClient(base_url=self.url) as client:
                stream = await client.chat_completion(
                    self._messages(prompt), max_tokens=NUM_OUTPUT, stream=True
                )
                text = ""
                async for chunk in stream:
                    delta = chunk.choices[0].delta.content or "" if chunk.choices else ""
                    text += delta
                    yield CompletionResponse(text=text, delta=delta)

        return gen()


@pytest.fixture
def llm(server: FakeInferenceServer) -> HubLLM:
    return HubLLM(url=server.url, callback_manager=CallbackManager([BudgetCallbackHandler()]))


def only_adapter_records(b: Any) -> list[tuple[str, int, int]]:
    return [(r.source, r.input_tokens, r.output_tokens) for r in b.records]


def test_complete_is_counted_once_by_the_adapter(
    llm: HubLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        assert llm.complete(PROMPT).text == "Transformers are neural networks that"
    assert server.request_count == 1
    assert only_adapter_records(b) == [(ADAPTER, 5, NUM_OUTPUT)]
    assert b.calls == 1 and b.spent_exact == PROMPT_COST and b.reserved == 0


def test_chat_calling_complete_is_counted_once(
    llm: HubLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    # CustomLLM.chat emits an LLM event and calls complete, which emits another; one HTTP request.
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        llm.chat([ChatMessage(role="user", content=PROMPT)])
    assert server.request_count == 1
    assert [r.source for r in b.records] == [ADAPTER]
    assert b.calls == 1 and b.reserved == 0


def test_stream_read_lazily_is_counted_once(
    llm: HubLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        chunks = list(llm.stream_complete(PROMPT))
    assert chunks[-1].text == "Transformers are neural networks that"
    assert server.request_count == 1
    assert only_adapter_records(b) == [(ADAPTER, 5, NUM_OUTPUT)]
    assert b.calls == 1 and b.spent_exact == PROMPT_COST and b.reserved == 0 and b.records[0].streamed


async def test_async_calls_are_counted_once(
    llm: HubLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    async with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        await llm.acomplete(PROMPT)
        chunks = [c async for c in await llm.astream_complete(PROMPT)]
    assert chunks[-1].text == "Transformers are neural networks that"
    assert server.request_count == 2
    assert only_adapter_records(b) == [(ADAPTER, 5, NUM_OUTPUT)] * 2
    assert b.calls == 2 and b.spent_exact == 2 * PROMPT_COST and b.reserved == 0


def test_a_call_beside_an_open_stream_is_not_taken_for_it(
    llm: HubLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    # A stream of an LLM that does not use huggingface_hub is open; a direct InferenceClient call made next
    # to it is the adapter's alone, and the stream is still charged by the handler.
    from .test_llamaindex_other_llms import ServerLLM

    other = ServerLLM(url=server.url, callback_manager=CallbackManager([BudgetCallbackHandler()]))
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        stream = other.stream_complete(PROMPT)
        next(stream)
        InferenceClient(base_url=server.url).chat_completion(
            [{"role": "user", "content": PROMPT}], max_tokens=NUM_OUTPUT
        )
        llm.complete(PROMPT)
        for _ in stream:
            pass
    assert server.request_count == 3
    assert sorted(r.source for r in b.records) == sorted([ADAPTER, ADAPTER, "llamaindex.llm_event"])
    assert b.calls == 3 and b.spent_exact == 3 * PROMPT_COST and b.reserved == 0


def test_a_failed_request_costs_nothing(
    llm: HubLLM, server: FakeInferenceServer, prices: dict[str, float]
) -> None:
    server.fail_next(500)
    with budget(max_usd=1, price_per_1k_tokens=prices) as b, pytest.raises(Exception) as failed:
        llm.complete(PROMPT)
    assert isinstance(failed.value, (httpx.HTTPError, OSError)) or "500" in str(failed.value)
    assert (b.calls, b.spent_exact, b.reserved) == (0, 0, 0)


def test_the_last_call_slot_goes_to_the_call_itself(llm: HubLLM, server: FakeInferenceServer) -> None:
    """The handler's hold on the event is given back before the adapter reserves the HTTP call, so a budget
    with room for exactly one call lets that call through (it was refused by its own shadow before)."""
    with budget(max_llm_calls=1, price_per_1k_tokens={"input": 1.0, "output": 2.0}) as b:
        llm.complete(PROMPT)
    assert server.request_count == 1 and b.calls == 1
    assert only_adapter_records(b) == [(ADAPTER, 5, NUM_OUTPUT)]
    assert b.reserved == 0


def test_a_bound_handler_charges_its_budget_inside_an_unrelated_one(server: FakeInferenceServer) -> None:
    """The adapter charges the budget the handler is bound to, not the one active around the call, and that
    budget's caps hold (here: one call)."""
    from shekel import BudgetExceededError

    bound = budget(
        max_usd=1, max_llm_calls=1, name="bound", price_per_1k_tokens={"input": 1.0, "output": 2.0}
    )
    llm = HubLLM(url=server.url, callback_manager=CallbackManager([BudgetCallbackHandler(budget=bound)]))
    with budget(name="outer", price_per_1k_tokens={"input": 1.0, "output": 2.0}) as outer:
        llm.complete(PROMPT)
        with pytest.raises(BudgetExceededError):
            llm.complete(PROMPT)
    assert server.request_count == 1
    assert bound.calls == 1 and bound.spent_exact == PROMPT_COST and bound.reserved == 0
    assert outer.calls == 0
