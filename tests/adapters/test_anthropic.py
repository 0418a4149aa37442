"""The Anthropic SDK adapter, through the real anthropic client over HTTP to the local server."""

from __future__ import annotations

import asyncio
import gc
from decimal import Decimal
from typing import Any

import pytest

import shekel
from shekel import BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

anthropic = pytest.importorskip("anthropic")

PRICES = {"input": 1.0, "output": 2.0}
MESSAGES = [{"role": "user", "content": "hi there"}]  # 2 words + 3 = 5 prompt tokens


def cost(prompt: int, completion: int) -> Decimal:
    return Decimal("0.001") * prompt + Decimal("0.002") * completion


@pytest.fixture
def client(server: FakeInferenceServer) -> Any:
    with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0) as made:
        yield made


def create(client: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("max_tokens", 5)
    return client.messages.create(model="claude-x", messages=MESSAGES, **kwargs)


def test_install_is_idempotent_and_uninstall_restores_the_exact_originals() -> None:
    from anthropic._base_client import AsyncAPIClient, SyncAPIClient

    shekel.uninstall()
    originals = {cls: cls.__dict__["request"] for cls in (SyncAPIClient, AsyncAPIClient)}
    shekel.install()
    shekel.install()
    assert all(cls.__dict__["request"] is not originals[cls] for cls in originals)
    shekel.uninstall()
    shekel.uninstall()
    assert all(cls.__dict__["request"] is originals[cls] for cls in originals)


def test_messages_create_stream_helper_and_raw(client: Any) -> None:
    shekel.uninstall()
    plain = [event.type for event in create(client, stream=True)]
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        assert create(client).usage.output_tokens == 5
        assert [event.type for event in create(client, stream=True)] == plain
        with client.messages.stream(model="claude-x", messages=MESSAGES, max_tokens=4) as stream:
            assert stream.get_final_message().usage.output_tokens == 4
        raw = client.messages.with_raw_response.create(model="claude-x", messages=MESSAGES, max_tokens=3)
        assert raw.parse().usage.output_tokens == 3
    assert b.spent_exact == cost(5, 5) * 2 + cost(5, 4) + cost(5, 3)
    assert (b.calls, b.estimated_calls, b.reserved) == (4, 0, 0)
    assert {r.source for r in b.records} == {"anthropic.messages"}


def test_a_streamed_raw_response_read_as_lines_or_abandoned_is_settled(client: Any) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with client.messages.with_streaming_response.create(
            model="claude-x", messages=MESSAGES, max_tokens=3, stream=True
        ) as response:
            assert any("message_delta" in line for line in response.iter_lines())
        assert (b.calls, b.reserved, b.spent_exact) == (1, 0, cost(5, 3))
        stream = create(client, max_tokens=30, stream=True)
        for _event in stream:
            break
        del stream, _event
        gc.collect()  # left part-way and dropped: charged what was received
        assert b.calls == 2 and b.reserved == 0


def test_a_retry_past_max_llm_calls_is_not_sent(server: FakeInferenceServer) -> None:
    server.fail_next(503, times=2)
    retrying = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=2)
    with budget(max_llm_calls=2, price_per_1k_tokens=PRICES) as b, pytest.raises(anthropic.APIStatusError):
        create(retrying)
    assert server.request_count == 2 and (b.calls, b.failed_calls, b.reserved) == (0, 2, 0)


def test_count_tokens_is_not_charged(client: Any) -> None:
    with budget(max_usd=1, max_llm_calls=1, price_per_1k_tokens=PRICES) as b:
        client.messages.count_tokens(model="claude-x", messages=MESSAGES)
        create(client)
    assert b.calls == 1


def test_cache_reads_and_writes_are_priced_apart() -> None:
    prices = {"claude-x": {"input": 1.0, "output": 2.0, "cached_input": 0.1, "cache_write": 1.25}}
    with FakeInferenceServer(anthropic_cache_read=2, anthropic_cache_write=2) as server:
        with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0) as client:
            with budget(max_usd=1, price_per_1k_tokens=prices) as b:
                create(client)
                list(create(client, stream=True))
    one = Decimal("0.001") * 1 + Decimal("0.0001") * 2 + Decimal("0.00125") * 2 + Decimal("0.002") * 5
    assert b.spent_exact == 2 * one
    assert b.input_tokens == 10 and b.estimated_calls == 0


async def test_async_create_and_stream(server: FakeInferenceServer) -> None:
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="x", max_retries=0) as client:
        with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
            await client.messages.create(model="claude-x", messages=MESSAGES, max_tokens=3)
            stream = await client.messages.create(
                model="claude-x", messages=MESSAGES, max_tokens=4, stream=True
            )
            [event async for event in stream]
            async with client.messages.stream(model="claude-x", messages=MESSAGES, max_tokens=2) as helper:
                await helper.get_final_message()
    assert b.spent_exact == cost(5, 3) + cost(5, 4) + cost(5, 2) and b.reserved == 0


def test_a_call_that_cannot_be_paid_for_is_never_sent(client: Any, server: FakeInferenceServer) -> None:
    with budget(max_usd=0.01, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(BudgetExceededError):
            create(client, max_tokens=1000)
    assert server.request_count == 0 and b.reserved == 0


@pytest.mark.parametrize("status", [429, 529])
def test_error_answers_pass_through_free(client: Any, server: FakeInferenceServer, status: int) -> None:
    server.fail_next(status)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(anthropic.APIStatusError):
            create(client)
    assert b.spent == 0 and b.reserved == 0 and b.failed_calls == 1


async def test_tasks_never_pass_a_small_cap(server: FakeInferenceServer) -> None:
    server.latency = 0.02
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="x", max_retries=0) as client:
        with budget(max_usd=0.2, price_per_1k_tokens=PRICES, wait=0) as b:
            results = await asyncio.gather(
                *(
                    client.messages.create(model="claude-x", messages=MESSAGES, max_tokens=20)
                    for _ in range(12)
                ),
                return_exceptions=True,
            )
    assert any(isinstance(r, BudgetExceededError) for r in results)
    assert b.spent_exact <= Decimal("0.2") and b.reserved == 0 and server.request_count == b.calls


def test_anthropic_api_is_priced_from_the_bundled_data(server: FakeInferenceServer) -> None:
    pytest.importorskip("genai_prices")
    httpx2 = pytest.importorskip("httpx2")
    http = httpx2.Client(transport=server.transport("httpx2"))
    with anthropic.Anthropic(api_key="sk-x", http_client=http, max_retries=0) as direct:
        with budget(max_usd=1) as b:
            direct.messages.create(model="claude-3-5-haiku-latest", messages=MESSAGES, max_tokens=2)
    (record,) = b.records
    assert record.provider == "anthropic" and record.priced
    assert record.cost == Decimal("0.8") / 10**6 * 5 + Decimal("4") / 10**6 * 2


def test_docs_page_examples_run(server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "anthropic.md"
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        code = block.replace(
            'Anthropic(api_key="sk-ant-...")', f'Anthropic(base_url="{server.url}", api_key="x")'
        )
        exec(compile(code, "docs/anthropic.md", "exec"), namespace)
    assert "2 0" in capsys.readouterr().out
    assert [r.route for r in server.requests] == ["messages", "messages", "messages.count_tokens"]
