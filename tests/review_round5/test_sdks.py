"""Attacks on the OpenAI and Anthropic SDK adapters (issue 11): the real SDKs over HTTP to the fake server."""

from __future__ import annotations

import contextlib
import gc

import pytest

import shekel
from shekel import BudgetExceededError, PricingError, budget
from shekel.testing import FakeInferenceServer

openai = pytest.importorskip("openai")

PRICES = {"input": 1.0, "output": 2.0}
MESSAGES = [{"role": "user", "content": "hi there"}]


def test_sdk_retries_count_against_max_llm_calls(server: FakeInferenceServer) -> None:
    """Expected (docs/hard-caps.md, "Failed calls"): every request that reaches a server counts against
    max_llm_calls, so under max_llm_calls=1 at most one request is sent, or every one sent is counted.
    Observed: the SDK's max_retries=2 after two 503 answers sends 3 requests under max_llm_calls=1, and the
    budget counts 1 call, 0 failed (docs/openai.md says so: the two pages contradict each other)."""
    shekel.install()
    server.fail_next(503, times=2)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=2)
    with budget(max_llm_calls=1, price_per_1k_tokens=PRICES) as b:
        with contextlib.suppress(BudgetExceededError, openai.APIStatusError):
            client.chat.completions.create(model="test/model", messages=MESSAGES, max_tokens=5)
    sent = server.request_count
    assert sent <= 1 or b.calls + b.failed_calls == sent, (sent, b.calls, b.failed_calls)


def test_the_callers_stream_options_are_sent_as_given(server: FakeInferenceServer) -> None:
    """Expected: a caller's stream_options={"include_usage": False} reaches the server unchanged."""
    shekel.install()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        list(
            client.chat.completions.create(
                model="test/model",
                messages=MESSAGES,
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": False},
            )
        )
    assert server.requests[-1].body.get("stream_options") == {"include_usage": False}
    assert b.calls == 1 and b.reserved == 0


def test_a_stream_abandoned_half_way_is_settled_when_collected(server: FakeInferenceServer) -> None:
    """Expected (docs/hard-caps.md, "Failed calls"): a stream left part-way (break, then dropped and
    garbage-collected) is charged what was received, counted as a call, with nothing left held.
    Observed (openai 2.54): b.calls == 0, b.reserved == $0.148, b.spent == $0 -- still so after the budget
    exits, with no record: the request was sent and answered, and the budget never charges it."""
    shekel.install()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        stream = client.chat.completions.create(
            model="test/model", messages=MESSAGES, max_tokens=50, stream=True
        )
        for _chunk in stream:
            break
        del stream, _chunk
        gc.collect()
        assert b.calls == 1 and b.reserved == 0, (b.calls, b.reserved)


def test_streaming_response_read_as_raw_lines_is_settled_and_hides_nothing_it_added(
    server: FakeInferenceServer,
) -> None:
    """Expected: ``with_streaming_response`` read through ``iter_lines()`` (its documented use) is counted
    once and settled when the block ends: b.calls == 1, nothing held, spend > 0 (and the usage chunk shekel
    asked for is not shown to a caller who did not ask for it).
    Observed: b.calls == 0, b.reserved == $0.058, b.spent == $0, still so after the budget exits (no
    record); the raw lines also show the ``"choices": [], "usage": {...}`` chunk that shekel added
    (stream_options={"include_usage": True} was sent though the caller gave none)."""
    shekel.install()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with client.chat.completions.with_streaming_response.create(
            model="test/model", messages=MESSAGES, max_tokens=5, stream=True
        ) as response:
            lines = [line for line in response.iter_lines() if line]
        assert lines
        figures = (b.calls, b.reserved, b.spent)
    assert figures[0] == 1 and figures[1] == 0 and figures[2] > 0, figures


def test_unknown_price_error_does_not_show_credentials_in_the_base_url(server: FakeInferenceServer) -> None:
    """Expected: a PricingError for a gateway whose base_url carries credentials (userinfo or a
    ``?api-key=`` query, as some gateways take them) names the host without them."""
    shekel.install()
    secret = "sk-supersecret-123456"
    host = server.url.split("://", 1)[1]
    for base in (f"http://user:{secret}@{host}/v1", f"{server.url}/v1?api-key={secret}"):
        client = openai.OpenAI(base_url=base, api_key=secret, max_retries=0)
        with budget(max_usd=1, on_unknown_price="raise"), pytest.raises(PricingError) as caught:
            client.chat.completions.create(model="unpriced/model", messages=MESSAGES, max_tokens=5)
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)


def test_anthropic_count_tokens_is_neither_charged_nor_counted(server: FakeInferenceServer) -> None:
    """Expected (issue 11): messages.count_tokens costs nothing and is not a call; under max_llm_calls=1
    a count_tokens then a create both go."""
    anthropic = pytest.importorskip("anthropic")
    shekel.install()
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    with budget(max_llm_calls=1, price_per_1k_tokens=PRICES) as b:
        # The fake server may not speak it: what matters is that shekel did not count it.
        with contextlib.suppress(anthropic.APIStatusError):
            client.messages.count_tokens(model="claude-x", messages=MESSAGES)
        client.messages.create(model="claude-x", messages=MESSAGES, max_tokens=5)
    assert b.calls == 1


def test_chat_openai_batch_under_a_small_cap_never_passes_it(server: FakeInferenceServer) -> None:
    """Expected (issue 11): a LangChain ChatOpenAI batch of 8 under a $0.30 cap spends at most $0.30, and
    every request that reached the server is counted once."""
    langchain_openai = pytest.importorskip("langchain_openai")
    shekel.install()
    model = langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1", api_key="x", model="test/model", max_retries=0, max_tokens=50
    )
    with budget(max_usd=0.30, price_per_1k_tokens=PRICES) as b:
        model.batch(["hi there"] * 8, return_exceptions=True)
    assert b.spent <= 0.30 and b.calls == server.request_count, (b.spent, b.calls, server.request_count)
