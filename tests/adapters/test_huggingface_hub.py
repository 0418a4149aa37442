"""The huggingface_hub adapter, through the real InferenceClient over HTTP to the local server."""

from __future__ import annotations

import gc
import warnings
from decimal import Decimal
from typing import Any

import pytest

import shekel
from shekel import BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi there"}]  # the server counts 2 words + 3 = 5 prompt tokens


def cost(prompt: int, completion: int) -> Decimal:
    return Decimal("0.001") * prompt + Decimal("0.002") * completion


def chat(client: Any, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="test/model", messages=MESSAGES, **kwargs)


# ------------------------------------------------------------------------------------------ patching
def test_install_is_idempotent_and_uninstall_restores_the_exact_originals() -> None:
    shekel.uninstall()
    originals = {
        (cls, name): cls.__dict__[name]
        for cls in (InferenceClient, AsyncInferenceClient)
        for name in ("chat_completion", "text_generation")
    }
    shekel.install()
    patched = {key: key[0].__dict__[key[1]] for key in originals}
    assert all(patched[key] is not originals[key] for key in originals)
    shekel.install()
    assert all(key[0].__dict__[key[1]] is patched[key] for key in originals)
    shekel.uninstall()
    assert all(key[0].__dict__[key[1]] is originals[key] for key in originals)
    shekel.uninstall()
    assert all(key[0].__dict__[key[1]] is originals[key] for key in originals)


def test_entering_a_budget_installs_the_patch() -> None:
    shekel.uninstall()
    assert not hasattr(InferenceClient.__dict__["chat_completion"], "__shekel_original__")
    with budget():
        assert hasattr(InferenceClient.__dict__["chat_completion"], "__shekel_original__")


def test_without_a_budget_the_call_is_untouched(server: FakeInferenceServer) -> None:
    shekel.install()
    client = InferenceClient(base_url=server.url)
    chat(client)
    assert "max_tokens" not in server.requests[-1].body or server.requests[-1].body["max_tokens"] is None
    assert server.requests[-1].body.get("stream_options") is None


# ------------------------------------------------------------------------------------------ non-streaming
def test_chat_completion_is_counted_and_priced_from_reported_usage(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        response = chat(client, max_tokens=7)
        assert response.usage.prompt_tokens == 5 and response.usage.completion_tokens == 7
        client.chat_completion(MESSAGES, model="test/model", max_tokens=3)
    assert b.spent_exact == cost(5, 7) + cost(5, 3)
    assert (b.calls, b.input_tokens, b.output_tokens) == (2, 10, 10)
    assert b.estimated_calls == 0
    assert b.reserved == 0
    assert server.request_count == 2


def test_missing_usage_is_estimated_and_marked(server: FakeInferenceServer) -> None:
    server.usage = False
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        chat(client, max_tokens=6)
    (record,) = b.records
    assert record.estimated and b.estimated_calls == 1
    assert record.output_tokens >= 6  # the reply was 6 words: never charged less than what was delivered
    assert b.spent > 0


def test_max_tokens_is_set_from_what_the_budget_can_pay(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.05, price_per_1k_tokens=PRICES) as b:
        chat(client)
    sent = server.requests[-1].body["max_tokens"]
    assert 1 <= sent < 25  # $0.05 pays for < 25 output tokens at $0.002
    assert b.spent_exact <= Decimal("0.05")


def test_a_call_that_cannot_be_paid_for_is_never_sent(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.01, name="tiny", price_per_1k_tokens=PRICES) as b:
        with pytest.raises(BudgetExceededError) as info:
            chat(client, max_tokens=100)
    assert server.request_count == 0
    assert b.spent == 0 and b.reserved == 0
    err = info.value
    assert err.budget_name == "tiny" and err.limit == 0.01 and err.spent == 0 and err.model == "test/model"
    assert "tiny" in str(err) and "max_usd" in str(err)


def test_server_errors_pass_through_and_cost_nothing(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    server.fail_next(503)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as info:
            chat(client, max_tokens=5)
        assert info.value.response.status_code == 503
    assert b.spent == 0 and b.calls == 0 and b.reserved == 0


# ------------------------------------------------------------------------------------------ streaming
@pytest.mark.parametrize("mode", ["requested", "final", "cumulative", "always"])
def test_stream_usage_is_taken_from_the_last_usage_seen(server: FakeInferenceServer, mode: str) -> None:
    server.stream_usage = mode  # type: ignore[assignment]
    server.extra_completion_tokens = 1 if mode == "cumulative" else 0  # hyperbolic reports max_tokens + 1
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        chunks = list(chat(client, max_tokens=8, stream=True))
    assert all(chunk.choices for chunk in chunks) or mode == "always"
    completion = 8 + server.extra_completion_tokens
    assert b.spent_exact == cost(5, completion)
    assert b.estimated_calls == 0 and b.reserved == 0


def test_stream_usage_is_requested_and_the_extra_chunk_is_hidden(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    shekel.uninstall()
    plain = list(chat(client, max_tokens=4, stream=True))
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        counted = list(chat(client, max_tokens=4, stream=True))
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}
    assert [c.choices[0].delta.content for c in counted] == [c.choices[0].delta.content for c in plain]
    assert len(counted) == len(plain) == 4
    assert b.spent_exact == cost(5, 4) and b.estimated_calls == 0


def test_caller_asking_for_usage_still_gets_the_usage_chunk(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        chunks = list(chat(client, max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert b.spent_exact == cost(5, 4)


def test_stream_without_any_usage_is_estimated(server: FakeInferenceServer) -> None:
    server.stream_usage = "never"
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        chunks = list(chat(client, max_tokens=9, stream=True))
    assert len(chunks) == 9
    (record,) = b.records
    assert record.estimated and record.streamed and record.output_tokens == 9
    assert b.spent > 0 and b.reserved == 0


def test_an_abandoned_stream_is_charged_for_what_was_received(server: FakeInferenceServer) -> None:
    server.stream_usage = "never"
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        stream = chat(client, max_tokens=20, stream=True)
        for i, _ in enumerate(stream):
            if i == 2:
                break
        del stream
        gc.collect()
        assert b.calls == 1 and b.reserved == 0
    (record,) = b.records
    # 3 chunks of "Transformers are neural": at least one token per chunk, at most one per 4 characters
    assert 3 <= record.output_tokens <= 6 and record.estimated


def test_a_stream_broken_mid_way_raises_and_is_charged_what_it_held(server: FakeInferenceServer) -> None:
    # The connection broke: how much the provider generated is unknown, so the call is charged its
    # reservation (the worst case), marked as such, and counted as a failed request.
    server.stream_usage = "never"
    server.drop_stream_after(3)
    client = InferenceClient(base_url=server.url)
    received = 0
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(Exception):  # noqa: B017 - whatever httpx raises, shekel must not replace it
            for _ in chat(client, max_tokens=20, stream=True):
                received += 1
        held = b.to_dict()["records"]
    assert received == 3
    (record,) = b.records
    assert b.calls == 0 and b.failed_calls == 1 and b.reserved == 0
    assert record.outcome == "unknown" and record.estimated and record.output_tokens == 20 + 2  # + margin
    assert b.spent_exact == record.cost > 0 and held[0]["outcome"] == "unknown"


# ------------------------------------------------------------------------------------------ async
async def test_async_chat_and_stream_are_counted(server: FakeInferenceServer, aclosing: Any) -> None:
    client = aclosing(AsyncInferenceClient(base_url=server.url))
    async with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        await client.chat.completions.create(model="test/model", messages=MESSAGES, max_tokens=5)
        stream = await client.chat_completion(MESSAGES, model="test/model", max_tokens=6, stream=True)
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 6
    assert b.spent_exact == cost(5, 5) + cost(5, 6)
    assert b.reserved == 0


async def test_async_stream_finalized_after_the_block_charges_its_budget(
    server: FakeInferenceServer, aclosing: Any
) -> None:
    client = aclosing(AsyncInferenceClient(base_url=server.url))
    async with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        stream = await client.chat_completion(MESSAGES, model="test/model", max_tokens=6, stream=True)
        async for _ in stream:
            break
    assert shekel.current_budget() is None
    await stream.aclose()  # what the event loop's finalizer does, here after the block has exited
    assert b.calls == 1 and b.reserved == 0 and b.spent > 0


async def test_async_errors_release_the_reservation(server: FakeInferenceServer, aclosing: Any) -> None:
    client = aclosing(AsyncInferenceClient(base_url=server.url))
    server.fail_next(429, {"error": "Rate limit reached."})
    async with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
            await client.chat_completion(MESSAGES, model="test/model", max_tokens=5)
    assert b.calls == 0 and b.reserved == 0 and b.spent == 0


# ------------------------------------------------------------------------------------------ text generation
def test_text_generation_counts_exact_output_tokens_and_returns_a_plain_string(
    server: FakeInferenceServer,
) -> None:
    client = InferenceClient(model=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        text = client.text_generation("hello world", max_new_tokens=4)
        tokens = list(client.text_generation("hello world", max_new_tokens=3, stream=True))
    assert text == "Transformers are neural networks"
    assert tokens == ["Transformers", " are", " neural"]
    assert b.output_tokens == 7 and b.calls == 2 and b.reserved == 0
    assert all(r.estimated for r in b.records)  # TGI reports no prompt count: the prompt part is estimated


def test_text_generation_with_details_gives_the_caller_details(server: FakeInferenceServer) -> None:
    client = InferenceClient(model=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        output = client.text_generation("hello world", max_new_tokens=2, details=True)
    assert output.details.generated_tokens == 2
    assert b.output_tokens == 2


def test_text_generation_without_max_new_tokens_keeps_tgi_default_when_affordable(
    server: FakeInferenceServer,
) -> None:
    client = InferenceClient(model=server.url)
    with budget(max_usd=10, price_per_1k_tokens=PRICES):
        client.text_generation("hello")
    assert server.requests[-1].body["parameters"]["max_new_tokens"] == 100


# ------------------------------------------------------------------------------------------ unpriced
def test_unpriced_calls_are_counted_and_warned_once_per_model(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with budget(max_usd=1) as b:
            chat(client, max_tokens=3)
            chat(client, max_tokens=3)
    assert b.spent == 0.0 and b.calls == 2 and b.output_tokens == 6 and b.unpriced_calls == 2
    messages = [str(w.message) for w in caught if "no price" in str(w.message)]
    assert len(messages) == 1 and "test/model" in messages[0]
    assert "UNPRICED" in b.summary()


def test_a_caller_stopping_at_finish_reason_still_leaves_exact_usage(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        seen = []
        for chunk in chat(client, max_tokens=4, stream=True):
            seen.append(chunk.choices[0].delta.content)
            if chunk.choices[0].finish_reason is not None:
                break  # as llama-index's astream_chat does
    assert len(seen) == 4
    assert b.spent_exact == cost(5, 4) and b.estimated_calls == 0


async def test_async_caller_stopping_at_finish_reason_still_leaves_exact_usage(
    server: FakeInferenceServer,
    aclosing: Any,
) -> None:
    client = aclosing(AsyncInferenceClient(base_url=server.url))
    async with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        stream = await client.chat_completion(MESSAGES, model="test/model", max_tokens=4, stream=True)
        async for chunk in stream:
            if chunk.choices[0].finish_reason is not None:
                break
        await stream.aclose()
    assert b.spent_exact == cost(5, 4) and b.estimated_calls == 0


def test_a_stream_broken_after_the_finish_chunk_still_delivers_it(server: FakeInferenceServer) -> None:
    server.drop_stream_after(4)  # 4 content chunks, the last with finish_reason; then the connection drops
    client = InferenceClient(base_url=server.url)
    received = []
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(Exception):  # noqa: B017 - httpx's error, unchanged
            for chunk in chat(client, max_tokens=4, stream=True):
                received.append(chunk.choices[0].finish_reason)
    assert received == [None, None, None, "length"]
    assert b.failed_calls == 1 and b.reserved == 0 and b.records[0].outcome == "unknown"


@pytest.mark.parametrize("max_tokens", [1000.0, "1000"])
def test_a_limit_written_as_float_or_string_is_reserved_for_what_it_means(
    server: FakeInferenceServer, max_tokens: Any
) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.01, price_per_1k_tokens={"input": 0.0, "output": 1.0}) as b:
        with pytest.raises(BudgetExceededError):  # 1,000 output tokens at $0.001 cannot fit in $0.01
            chat(client, max_tokens=max_tokens)
    assert server.request_count == 0 and b.spent == 0
    with budget(max_usd=2, price_per_1k_tokens={"input": 0.0, "output": 1.0}) as b:
        chat(client, max_tokens=max_tokens)
    assert server.requests[-1].body["max_tokens"] == 1000  # sent as the whole number it was reserved for
    assert b.spent_exact <= Decimal(2)


@pytest.mark.parametrize(
    "suffix", ["?token=hf_SECRETSECRET", "#hf_SECRETSECRET", "?api_key=hf_SECRETSECRET&x=1"]
)
def test_a_token_in_an_endpoint_url_never_reaches_records_reports_or_errors(
    server: FakeInferenceServer, suffix: str
) -> None:
    client = InferenceClient(model=server.url + "/" + suffix)
    with budget(max_usd=0.0001, price_per_1k_tokens=PRICES):
        with pytest.raises(BudgetExceededError) as refused:
            client.text_generation("hello world", max_new_tokens=50)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        client.text_generation("hello world", max_new_tokens=2)
    shown = str(refused.value) + b.summary() + repr(b.to_dict()) + repr(b.records)
    assert "hf_SECRETSECRET" not in shown
    assert b.calls == 1 and b.records[0].model == server.url + "/"


def test_a_tool_call_stream_that_fails_mid_way_is_charged_for_what_it_delivered(
    server: FakeInferenceServer,
) -> None:
    """Deltas that carry only tool-call arguments (or reasoning) are output too: a stream that breaks after
    them delivered something and is charged, where one that broke before any chunk costs nothing."""
    import json

    delta = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": "c1",
                "type": "function",
                "function": {"name": None, "arguments": '{"city": "Par'},
            }
        ],
    }
    chunk = {
        "object": "chat.completion.chunk",
        "id": "",
        "created": 1,
        "model": "m",
        "system_fingerprint": "",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    body = f"data: {json.dumps(chunk)}\n\n" * 5 + 'data: {"error": "upstream overloaded"}\n\n'
    server.respond_next(body, content_type="text/event-stream")
    client = InferenceClient(base_url=server.url)
    received = 0
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(Exception, match="upstream overloaded"):  # the provider's error, unchanged
            for _ in chat(client, max_tokens=50, stream=True):
                received += 1
    assert received == 5
    assert b.calls == 1 and b.reserved == 0
    (record,) = b.records
    assert record.estimated and 5 <= record.output_tokens <= 50
