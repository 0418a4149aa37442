"""The OpenAI SDK adapter, through the real openai client over HTTP to the local server."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import shekel
from shekel import BudgetExceededError, PricingError, budget
from shekel.testing import FakeInferenceServer

openai = pytest.importorskip("openai")

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi there"}]  # the server counts 2 words + 3 = 5 prompt tokens


def cost(prompt: int, completion: int) -> Decimal:
    return Decimal("0.001") * prompt + Decimal("0.002") * completion


@pytest.fixture
def client(server: FakeInferenceServer) -> Any:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as made:
        yield made


def chat(client: Any, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="test/model", messages=MESSAGES, **kwargs)


# ------------------------------------------------------------------------------------------ patching
def test_install_is_idempotent_and_uninstall_restores_the_exact_originals() -> None:
    from openai._base_client import AsyncAPIClient, SyncAPIClient

    shekel.uninstall()
    originals = {cls: cls.__dict__["request"] for cls in (SyncAPIClient, AsyncAPIClient)}
    shekel.install()
    patched = {cls: cls.__dict__["request"] for cls in originals}
    assert all(patched[cls] is not originals[cls] for cls in originals)
    shekel.install()
    assert all(cls.__dict__["request"] is patched[cls] for cls in originals)
    shekel.uninstall()
    assert all(cls.__dict__["request"] is originals[cls] for cls in originals)
    shekel.uninstall()
    assert all(cls.__dict__["request"] is originals[cls] for cls in originals)


def test_without_a_budget_the_request_is_untouched(client: Any, server: FakeInferenceServer) -> None:
    shekel.install()
    list(chat(client, stream=True))
    body = server.requests[-1].body
    assert "max_tokens" not in body and "stream_options" not in body


def test_a_client_made_before_the_patch_is_counted(server: FakeInferenceServer) -> None:
    shekel.uninstall()
    early = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    create = early.chat.completions.create  # captured before any budget
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        create(model="m", messages=MESSAGES, max_tokens=3)
    assert b.calls == 1 and b.spent_exact == cost(5, 3)
    early.close()


# ------------------------------------------------------------------------------------------ chat
def test_chat_is_counted_from_reported_usage(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        answer = chat(client, max_tokens=7)
        assert answer.usage.completion_tokens == 7
        chat(client, max_completion_tokens=3)  # the local server reads only max_tokens: it answers in full
    assert b.spent_exact == cost(5, 7) + cost(5, server.requests[-1].output_tokens)
    assert (b.calls, b.estimated_calls, b.reserved) == (2, 0, 0)
    assert [r.source for r in b.records] == ["openai.chat.completions"] * 2


def test_max_tokens_is_sent_from_what_the_budget_can_pay(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=0.05, price_per_1k_tokens=PRICES) as b:
        chat(client)
    sent = server.requests[-1].body["max_tokens"]
    assert 1 <= sent < 25
    assert b.spent_exact <= Decimal("0.05")


def test_openai_own_api_gets_max_completion_tokens(server: FakeInferenceServer) -> None:
    http = httpx.Client(transport=server.transport())
    with openai.OpenAI(api_key="sk-x", http_client=http, max_retries=0) as direct:
        with budget(max_usd=0.05, price_per_1k_tokens=PRICES):
            direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    body = server.requests[-1].body
    assert "max_tokens" not in body and 1 <= body["max_completion_tokens"] < 25


def test_stream_asks_for_usage_and_hides_the_usage_chunk(client: Any, server: FakeInferenceServer) -> None:
    shekel.uninstall()
    plain = list(chat(client, max_tokens=4, stream=True))
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        stream = chat(client, max_tokens=4, stream=True)
        assert isinstance(stream, openai.Stream)
        counted = list(stream)
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}
    assert [c.choices[0].delta.content for c in counted] == [c.choices[0].delta.content for c in plain]
    assert b.spent_exact == cost(5, 4) and b.estimated_calls == 0 and b.reserved == 0


def test_a_caller_asking_for_usage_keeps_its_usage_chunk(client: Any) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        chunks = list(chat(client, max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert b.spent_exact == cost(5, 4)


def test_a_stream_closed_part_way_is_settled_at_once(client: Any) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with chat(client, max_tokens=20, stream=True) as stream:
            next(iter(stream))
        assert b.reserved == 0 and b.calls == 1
        assert b.records[-1].estimated


def test_raw_response_is_counted_once_and_parses_to_the_counted_object(client: Any) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES, max_tokens=3)
        assert raw.parse().usage.completion_tokens == 3
        streamed = client.chat.completions.with_raw_response.create(
            model="m", messages=MESSAGES, max_tokens=2, stream=True
        )
        assert len(list(streamed.parse())) == 2
    assert b.calls == 2 and b.spent_exact == cost(5, 3) + cost(5, 2) and b.reserved == 0


def test_a_streamed_raw_response_read_any_way_is_settled_and_hides_the_usage_chunk_it_added(
    client: Any,
) -> None:
    stream = client.chat.completions.with_streaming_response
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with stream.create(model="m", messages=MESSAGES, max_tokens=2, stream=True) as response:
            lines = [line for line in response.iter_lines() if line]
        assert b.calls == 1 and b.reserved == 0 and b.spent_exact == cost(5, 2)
        assert lines[-1] == "data: [DONE]" and not any('"choices": []' in line for line in lines)
        with stream.create(model="m", messages=MESSAGES, max_tokens=2, stream=True) as response:
            body = response.read()
        assert b'"choices": []' not in body and b.spent_exact == 2 * cost(5, 2)
        with stream.create(model="m", messages=MESSAGES, max_tokens=2, stream=True) as response:
            chunks = list(response.parse())
        assert len(chunks) == 2 and b.spent_exact == 3 * cost(5, 2)
        with stream.create(model="m", messages=MESSAGES, max_tokens=20, stream=True):
            pass  # closed unread: the request was sent, so its prompt is charged
        assert b.calls == 4 and b.reserved == 0 and b.records[-1].estimated


async def test_an_async_streamed_raw_response_read_as_lines_is_settled(server: FakeInferenceServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
            async with client.chat.completions.with_streaming_response.create(
                model="m", messages=MESSAGES, max_tokens=2, stream=True
            ) as response:
                lines = [line async for line in response.iter_lines() if line]
            assert b.calls == 1 and b.reserved == 0 and b.spent_exact == cost(5, 2)
            assert not any('"choices": []' in line for line in lines)


@pytest.mark.parametrize("cap", [1, 3])
def test_each_attempt_of_the_sdks_retries_is_a_call(server: FakeInferenceServer, cap: int) -> None:
    server.fail_next(503, times=2)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=2) as retrying:
        with budget(max_llm_calls=cap, price_per_1k_tokens=PRICES) as b:
            if cap == 1:
                with pytest.raises(openai.APIStatusError):  # the retry was not sent: the SDK's own error
                    chat(retrying, max_tokens=2)
            else:
                chat(retrying, max_tokens=2)
    assert server.request_count == cap and b.reserved == 0
    assert (b.calls, b.failed_calls) == ((0, 1) if cap == 1 else (1, 2))
    assert b.spent_exact == (0 if cap == 1 else cost(5, 2))


def test_an_attempt_that_timed_out_and_was_retried_is_charged_what_it_held(
    server: FakeInferenceServer,
) -> None:
    server.latency = 0.5
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=1, timeout=0.1) as retrying:
        with budget(max_llm_calls=5, price_per_1k_tokens=PRICES) as b, pytest.raises(openai.APITimeoutError):
            chat(retrying, max_tokens=2)
    assert server.request_count == 2 and b.reserved == 0
    assert [r.outcome for r in b.records] == ["unknown", "unknown"]


class Answer(BaseModel):
    text: str


def test_parse_and_the_stream_helper_are_counted(client: Any, server: FakeInferenceServer) -> None:
    server.reply = '{"text": "ok"}'
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        parsed = client.chat.completions.parse(model="m", messages=MESSAGES, response_format=Answer)
        assert parsed.choices[0].message.parsed == Answer(text="ok")
        with client.chat.completions.stream(model="m", messages=MESSAGES, max_tokens=50) as stream:
            final = stream.get_final_completion()
        assert final.choices[0].message.content == '{"text": "ok"}'
        assert final.usage is None  # as without shekel: the usage chunk shekel asked for is hidden
    assert b.calls == 2 and b.spent_exact == 2 * cost(5, 2) and b.estimated_calls == 0


async def test_async_chat_and_stream(server: FakeInferenceServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
            await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
            stream = await client.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=4, stream=True
            )
            chunks = [chunk async for chunk in stream]
            assert all(chunk.choices for chunk in chunks)
            async with client.chat.completions.stream(model="m", messages=MESSAGES, max_tokens=50) as helper:
                await helper.get_final_completion()
    full = server.requests[-1].output_tokens
    assert b.calls == 3 and b.spent_exact == cost(5, 3) + cost(5, 4) + cost(5, full) and b.reserved == 0


# ------------------------------------------------------------------------------------------ responses, embeddings
def test_responses_sync_and_stream(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        response = client.responses.create(model="m", input="hello world", max_output_tokens=4)
        assert response.usage.input_tokens == 5
        events = list(
            client.responses.create(model="m", input="hello world", max_output_tokens=3, stream=True)
        )
        assert events[-1].type == "response.incomplete"
        with client.responses.stream(model="m", input="hello world", max_output_tokens=100) as stream:
            stream.get_final_response()
    full = server.requests[-1].output_tokens
    assert b.spent_exact == cost(5, 4) + cost(5, 3) + cost(5, full)
    assert b.calls == 3 and b.estimated_calls == 0 and b.reserved == 0


def test_responses_without_a_limit_send_max_output_tokens(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=0.1, price_per_1k_tokens=PRICES) as b:
        client.responses.create(model="m", input="hello world")
    assert 1 <= server.requests[-1].body["max_output_tokens"] < 50
    assert b.spent_exact <= Decimal("0.1")


async def test_async_responses_stream(server: FakeInferenceServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
            stream = await client.responses.create(
                model="m", input="hello world", max_output_tokens=3, stream=True
            )
            [event async for event in stream]
    assert b.spent_exact == cost(5, 3) and b.reserved == 0


def test_embeddings_charge_input_tokens(client: Any) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        client.embeddings.create(model="e", input=["one two three", "four"])
    assert b.spent_exact == cost(4, 0) and b.calls == 1 and b.records[0].source == "openai.embeddings"


# ------------------------------------------------------------------------------------------ refusals and faults
def test_a_call_that_cannot_be_paid_for_is_never_sent(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=0.01, name="tiny", price_per_1k_tokens=PRICES) as b:
        with pytest.raises(BudgetExceededError):
            chat(client, max_tokens=100)
        with pytest.raises(BudgetExceededError):
            client.responses.create(model="m", input="hi", max_output_tokens=100)
    assert server.request_count == 0 and b.spent == 0 and b.reserved == 0


def test_max_llm_calls_refuses_before_sending(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_llm_calls=1) as b:
        chat(client, max_tokens=2)
        with pytest.raises(BudgetExceededError):
            client.embeddings.create(model="e", input="x")
    assert server.request_count == 1 and b.calls == 1


@pytest.mark.parametrize("status", [429, 500])
def test_error_answers_pass_through_free(client: Any, server: FakeInferenceServer, status: int) -> None:
    server.fail_next(status)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(openai.APIStatusError) as info:
            chat(client, max_tokens=5)
    assert info.value.status_code == status
    assert b.spent == 0 and b.reserved == 0 and b.failed_calls == 1


def test_retries_inside_the_sdk_are_one_call(server: FakeInferenceServer) -> None:
    server.fail_next(503)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=1) as retrying:
        with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
            retrying.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    assert server.request_count == 2 and b.calls == 1 and b.spent_exact == cost(5, 2)


def test_a_dropped_stream_raises_and_leaves_no_hold(client: Any, server: FakeInferenceServer) -> None:
    server.drop_stream_after(2)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(Exception):  # noqa: B017  # whatever the SDK raises for a cut connection
            list(chat(client, max_tokens=10, stream=True))
    (record,) = b.records
    assert b.reserved == 0 and b.spent > 0 and record.outcome == "unknown"


def test_threads_never_pass_a_small_cap(server: FakeInferenceServer) -> None:
    server.latency = 0.02
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    refused: list[BaseException] = []

    def work() -> None:
        try:
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=20)
        except BudgetExceededError as exc:
            refused.append(exc)

    with budget(max_usd=0.2, price_per_1k_tokens=PRICES, wait=0) as b:
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(work,)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    client.close()
    assert b.spent_exact <= Decimal("0.2") and refused and b.reserved == 0
    assert server.request_count == b.calls == 12 - len(refused)


async def test_tasks_never_pass_a_small_cap(server: FakeInferenceServer) -> None:
    server.latency = 0.02
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        with budget(max_usd=0.2, price_per_1k_tokens=PRICES, wait=0) as b:
            results = await asyncio.gather(
                *(
                    client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=20)
                    for _ in range(12)
                ),
                return_exceptions=True,
            )
    assert any(isinstance(r, BudgetExceededError) for r in results)
    assert b.spent_exact <= Decimal("0.2") and b.reserved == 0 and server.request_count == b.calls


# ------------------------------------------------------------------------------------------ pricing by address
def test_router_calls_are_priced_by_the_provider_that_served_them() -> None:
    prices = {"org/model": {"input": 1.0, "output": 2.0}}
    with FakeInferenceServer(router="together") as server:
        http = httpx.Client(transport=server.transport())
        router = openai.OpenAI(base_url="https://router.huggingface.co/v1", api_key="hf_x", http_client=http)
        with budget(max_usd=1, pricing=None, price_per_1k_tokens=prices) as b:
            router.chat.completions.create(model="org/model:together", messages=MESSAGES, max_tokens=2)
            router.chat.completions.create(model="org/model", messages=MESSAGES, max_tokens=2)
        router.close()
    assert [r.provider for r in b.records] == ["together", "together"]
    assert b.spent_exact == 2 * cost(5, 2)


def test_other_addresses_are_unpriced_unless_given_a_price(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=1, on_unknown_price="raise"):
        with pytest.raises(PricingError):
            chat(client, max_tokens=2)
    assert server.request_count == 0
    with pytest.warns(UserWarning, match="no price"), budget(max_usd=1) as b:
        chat(client, max_tokens=2)
    assert b.calls == 1 and b.spent == 0


def test_openai_api_is_priced_from_the_bundled_data(server: FakeInferenceServer) -> None:
    pytest.importorskip("genai_prices")
    http = httpx.Client(transport=server.transport())
    with openai.OpenAI(api_key="sk-x", http_client=http, max_retries=0) as direct:
        with budget(max_usd=1) as b:
            direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=2)
    (record,) = b.records
    assert record.provider == "openai" and record.priced and "openai" in (record.price_source or "")
    assert record.cost == Decimal("0.15") / 10**6 * 5 + Decimal("0.6") / 10**6 * 2


def test_fallback_models_are_sent(client: Any, server: FakeInferenceServer) -> None:
    prices = {"big": {"input": 10.0, "output": 20.0}, "small": {"input": 1.0, "output": 2.0}}
    # Only the fallback fits: the big model's prompt alone would cost more than the cap.
    with budget(max_usd=0.1, price_per_1k_tokens=prices, fallback={"at_pct": 0.8, "model": "small"}) as b:
        client.chat.completions.create(model="big", messages=MESSAGES, max_tokens=5)
    assert server.requests[-1].body["model"] == "small"
    assert b.records[0].fallback_from == "big"


# ------------------------------------------------------------------------------------------ docs/openai.md
def test_docs_page_examples_run(server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "openai.md"
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        code = block.replace("https://router.huggingface.co/v1", server.url + "/v1").replace(
            "http://localhost:8000/v1", server.url + "/v1"
        )
        exec(compile(code, "docs/openai.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "1 call, $" in out and "3 0" in out and "refused: " in out
    assert server.request_count == 4  # the refused call was never sent
