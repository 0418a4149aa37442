"""Per-provider prices on real ``huggingface_hub`` calls over HTTP to the local server.

The provider comes from the ``x-inference-provider`` answer header, the client's ``provider`` and the router
address. Router addresses are reached through huggingface_hub's own client factory with a transport that
sends ``router.huggingface.co`` requests to the local server, so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

import shekel
from shekel import BudgetExceededError, PricingError, budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("genai_prices")
httpx = pytest.importorskip("httpx")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
MESSAGES = [{"role": "user", "content": "hi there"}]  # the server counts 5 prompt tokens


def price(provider: str | None = "auto") -> shekel.Price:
    found = shekel.prices(MODEL, provider=provider)
    assert found is not None
    return found


def chat(client: Any, **kwargs: Any) -> Any:
    return client.chat_completion(MESSAGES, model=MODEL, max_tokens=4, **kwargs)


class _ToLocalServer(httpx.BaseTransport):  # type: ignore[misc]
    """Sends every request to the local server, keeping its path: the router, as far as a test can see."""

    def __init__(self, url: str) -> None:
        self._target = httpx.URL(url)
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: Any) -> Any:
        request.url = request.url.copy_with(
            scheme=self._target.scheme, host=self._target.host, port=self._target.port
        )
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def router(server: FakeInferenceServer) -> Iterator[FakeInferenceServer]:
    from huggingface_hub.utils._http import default_client_factory

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=_ToLocalServer(server.url)))
    try:
        yield server
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


# ------------------------------------------------------------------------------------------ the provider
def test_the_clients_provider_setting_prices_the_call(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url + "/v1", provider="together")
    with budget(max_usd=1) as b:
        chat(client)
    record = b.records[-1]
    assert record.provider == "together" and record.priced
    assert b.spent_exact == price("together").cost(5, 4)


def test_the_answer_header_names_the_provider_that_served_the_call(server: FakeInferenceServer) -> None:
    server.headers = {"x-inference-provider": "novita"}
    client = InferenceClient(base_url=server.url + "/v1", provider="together")
    with budget(max_usd=1) as b:
        chat(client)
    assert b.records[-1].provider == "novita"
    assert b.spent_exact == price("novita").cost(5, 4)


def test_a_scripted_answer_with_the_header_is_read_too(server: FakeInferenceServer) -> None:
    answer = server.chat_answer({"messages": MESSAGES, "max_tokens": 3, "model": MODEL})
    server.respond_next(json.dumps(answer), headers={"X-Inference-Provider": "Nebius"})
    client = InferenceClient(base_url=server.url + "/v1", provider="together")
    with budget(max_usd=1) as b:
        chat(client)
    assert b.records[-1].provider == "nebius"
    assert b.spent_exact == price("nebius").cost(5, 3)


def test_a_self_hosted_endpoint_without_the_header_is_unpriced(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url + "/v1")
    with budget(max_usd=1) as b, pytest.warns(UserWarning, match="self-hosted or unknown endpoint"):
        chat(client)
    assert b.unpriced_calls == 1 and b.spent == 0 and b.records[-1].provider is None


def test_a_self_hosted_endpoint_priced_by_the_user(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url + "/v1")
    with budget(max_usd=1, price_per_1k_tokens={MODEL: {"input": 1, "output": 2}}) as b:
        chat(client)
    assert b.spent_exact == Decimal("0.001") * 5 + Decimal("0.002") * 4


def test_a_header_never_prices_a_call_above_what_was_reserved(server: FakeInferenceServer) -> None:
    """A call to an unknown endpoint (a gateway in front of the router, say) is reserved unpriced, so the cap
    could not hold it; settling it at the provider's price the answer names would pass the cap unchecked. It
    stays unpriced, and its record says what it would have cost."""
    server.headers = {"x-inference-provider": "together"}
    client = InferenceClient(base_url=server.url + "/v1")
    with budget(max_usd=0.0001, on_unknown_price="zero") as b:
        chat(client)
    record = b.records[-1]
    assert record.provider == "together" and not record.priced
    assert b.unpriced_calls == 1 and b.spent_exact == 0 <= Decimal("0.0001")
    assert any("not charged" in note and "together" in note for note in record.notes)


def test_text_generation_at_a_provider(server: FakeInferenceServer) -> None:
    client = InferenceClient(model=server.url, provider="groq")
    with budget(price_per_1k_tokens={"*": {"input": 9, "output": 9}}) as b:
        client.text_generation("one two three", model=None, max_new_tokens=3)
    # The budget's "*" price wins over the bundled one: budgets come first.
    assert b.records[-1].provider == "groq" and b.records[-1].price_source == "budget 'budget'"


# ------------------------------------------------------------------------------------------ router addresses
def test_a_router_provider_address_prices_that_provider(router: FakeInferenceServer) -> None:
    client = InferenceClient(base_url="https://router.huggingface.co/sambanova/v1")
    with budget(max_usd=1) as b:
        chat(client)
    assert router.requests[-1].path == "/sambanova/v1/chat/completions"
    assert b.records[-1].provider == "sambanova"
    assert b.spent_exact == price("sambanova").cost(5, 4)


def test_auto_routing_reserves_the_highest_price_and_settles_at_the_header(
    router: FakeInferenceServer,
) -> None:
    router.headers = {"x-inference-provider": "novita"}
    client = InferenceClient(base_url="https://router.huggingface.co/v1")
    highest = price("auto")
    assert highest.output_per_token > price("novita").output_per_token
    with budget(max_usd=1) as b:
        stream = chat(client, stream=True)
        next(iter(stream))
        # Held while the stream runs: the worst case at the highest price among the providers.
        assert b.reserved == float(highest.cost(_held_prompt(), 4 + 2))
        for _ in stream:
            pass
    assert b.reserved == 0
    assert b.records[-1].provider == "novita"
    assert b.spent_exact == price("novita").cost(5, 4)


def _held_prompt() -> int:
    from shekel._usage import prompt_tokens_high

    return prompt_tokens_high(MESSAGES)


def test_auto_routing_without_the_header_is_charged_at_the_highest_price(router: FakeInferenceServer) -> None:
    client = InferenceClient(base_url="https://router.huggingface.co/v1")
    with budget(max_usd=1) as b:
        chat(client)
    assert b.records[-1].provider == "auto"
    assert b.spent_exact == price("auto").cost(5, 4)


def test_the_model_suffix_picks_the_provider_on_the_router(router: FakeInferenceServer) -> None:
    client = InferenceClient(base_url="https://router.huggingface.co/v1")
    with budget(max_usd=1) as b:
        client.chat_completion(MESSAGES, model=f"{MODEL}:together", max_tokens=4)
    assert b.spent_exact == price("together").cost(5, 4)


async def test_the_async_client_reads_the_header(server: FakeInferenceServer) -> None:
    server.headers = {"x-inference-provider": "hyperbolic"}
    async with AsyncInferenceClient(base_url=server.url + "/v1", provider="together") as client:
        async with budget(max_usd=1) as b:
            stream = await client.chat_completion(MESSAGES, model=MODEL, max_tokens=4, stream=True)
            async for _ in stream:
                pass
    assert b.records[-1].provider == "hyperbolic"
    assert b.spent_exact == price("hyperbolic").cost(5, 4)


# ------------------------------------------------------------------------------------------ policies and caps
def test_raise_sends_nothing_for_an_unpriced_call(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url + "/v1")
    with budget(max_usd=1, on_unknown_price="raise"), pytest.raises(PricingError, match=MODEL):
        chat(client)
    assert server.request_count == 0


def test_zero_counts_an_unpriced_call_silently(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url + "/v1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with budget(max_usd=1, on_unknown_price="zero") as b:
            chat(client)
    assert b.unpriced_calls == 1 and b.input_tokens == 5 and "UNPRICED" in b.summary()


def test_max_total_tokens_caps_free_calls_before_they_are_sent(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url + "/v1")
    free = {MODEL: {"input": 0, "output": 0}}
    with budget(max_total_tokens=80, price_per_1k_tokens=free) as b:
        client.chat_completion(MESSAGES, model=MODEL)  # no max_tokens: shekel sends the most that fits
        sent = server.requests[-1].body["max_tokens"]
        assert sent == 80 - _held_prompt() - 2
        with pytest.raises(BudgetExceededError, match="max_total_tokens"):
            client.chat_completion(MESSAGES, model=MODEL, max_tokens=70)
    assert server.request_count == 1 and b.calls == 1 and b.spent == 0


def test_cached_prompt_tokens_are_recorded_when_the_price_has_no_cached_part(
    server: FakeInferenceServer,
) -> None:
    answer = server.chat_answer({"messages": MESSAGES, "max_tokens": 4, "model": MODEL})
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 3}
    server.respond_next(json.dumps(answer))
    client = InferenceClient(base_url=server.url + "/v1", provider="together")
    with budget(max_usd=1) as b:
        chat(client)
    assert b.spent_exact == price("together").cost(5, 4)
    assert b.records[-1].notes == (
        "3 cached input tokens were charged at the full input price: the price has no cached-input part",
    )


def test_uninstall_takes_the_header_hook_off_the_shared_http_client(server: FakeInferenceServer) -> None:
    from shekel.adapters import _http_hooks

    client = InferenceClient(base_url=server.url + "/v1", provider="together")
    with budget():
        chat(client)
    session = huggingface_hub.get_session()
    assert _http_hooks._on_response in session.event_hooks["response"]
    shekel.uninstall()
    assert _http_hooks._on_response not in session.event_hooks["response"]
    with budget() as b:  # entering a budget installs the patch, and the hook, again
        chat(client)
    assert _http_hooks._on_response in session.event_hooks["response"] and b.calls == 1
