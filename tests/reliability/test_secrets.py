"""Secrets: with ``HF_TOKEN`` set and an explicit ``api_key``, no token appears in any exception message, log
record, ``summary()``, ``to_dict()``, ``repr`` or warning that a budget's life produces."""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from shekel import Budget, BudgetExceededError, PricingError, budget
from shekel.testing import FakeInferenceServer

from ._support import walk

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient

ENV_TOKEN = "hf_EnvSecretTokenDoNotLeak0123456789"
EXPLICIT_TOKEN = "hf_ExplicitSecretKeyDoNotLeak9876543"
TOKENS = (ENV_TOKEN, EXPLICIT_TOKEN)
MESSAGES = [{"role": "user", "content": "hello there"}]
PRICES = {"input": 1.0, "output": 2.0}


class Evidence:
    """Everything a user, a log pipeline or an error tracker could see."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def exception(self, exc: BaseException) -> None:
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:  # the whole chain, as a traceback shows it
            seen.add(id(current))
            self.texts += [str(current), repr(current), repr(current.args), repr(vars(current))]
            current = current.__cause__ or current.__context__

    def budget(self, b: Budget) -> None:
        for each in walk(b):
            self.texts += [each.summary(), json.dumps(each.to_dict()), repr(each), repr(each.records)]

    def assert_clean(self) -> None:
        assert self.texts, "nothing was collected"
        for text in self.texts:
            for token in TOKENS:
                assert token not in text, f"a token leaked into: {text[:300]}"


@pytest.fixture
def evidence(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[Evidence]:
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    found = Evidence()
    caplog.set_level(logging.DEBUG)  # every logger: shekel's, huggingface_hub's, httpx's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield found
    found.texts += [str(w.message) for w in caught]
    found.texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    found.texts += [caplog.text]
    found.assert_clean()


def test_the_token_is_really_sent_so_the_test_can_see_a_leak(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url, api_key=EXPLICIT_TOKEN)
    with budget(max_usd=1, price_per_1k_tokens=PRICES):
        client.chat_completion(MESSAGES, max_tokens=3)
    assert server.requests[-1].headers["authorization"] == f"Bearer {EXPLICIT_TOKEN}"


def _sync_life(client: Any, server: FakeInferenceServer, evidence: Evidence) -> Budget:
    """A budget's whole life: calls, streams, provider errors, warnings, fallback, refusal, nesting."""
    root = budget(
        max_usd=0.2,
        name="root",
        price_per_1k_tokens={"*": PRICES, "cheap/model": {"input": 0.1, "output": 0.1}},
        warn_at=0.01,
        fallback={"at_pct": 0.5, "model": "cheap/model"},
    )
    with root:
        client.chat_completion(MESSAGES, max_tokens=5)
        for _ in client.chat_completion(MESSAGES, max_tokens=5, stream=True):
            pass
        for status, body in ((401, {"error": "Invalid credentials in Authorization header"}), (503, None)):
            server.fail_next(status, body)
            try:
                client.chat_completion(MESSAGES, max_tokens=5)
            except Exception as exc:
                evidence.exception(exc)
        server.drop_stream_after(2)
        try:
            for _ in client.chat_completion(MESSAGES, max_tokens=5, stream=True):
                pass
        except Exception as exc:
            evidence.exception(exc)
        with budget(max_usd=0.01, name="child") as child:
            try:
                client.chat_completion(MESSAGES, max_tokens=500)
            except BudgetExceededError as exc:
                evidence.exception(exc)
            else:
                raise AssertionError("the child budget cannot pay for 500 tokens")
        with budget(max_llm_calls=1, name="one-call"):
            client.chat_completion(MESSAGES, max_tokens=2)
            try:
                client.chat_completion(MESSAGES, max_tokens=2)
            except BudgetExceededError as exc:
                evidence.exception(exc)
        evidence.budget(child)
    # A model nobody priced (a self-hosted URL) in a budget without prices: the unpriced warning, the refusal.
    with budget(max_usd=1, name="unpriced") as unpriced:
        client.chat_completion(MESSAGES, max_tokens=2)
    evidence.budget(unpriced)
    if "on_unknown_price" in inspect.signature(budget).parameters:
        with budget(max_usd=1, name="strict", on_unknown_price="raise") as strict:
            try:
                client.chat_completion(MESSAGES, max_tokens=2)
            except PricingError as exc:
                evidence.exception(exc)
            else:
                raise AssertionError("an unpriced call must be refused with on_unknown_price='raise'")
        evidence.budget(strict)
    return root


def test_no_token_in_errors_reports_logs_or_warnings(server: FakeInferenceServer, evidence: Evidence) -> None:
    client = InferenceClient(base_url=server.url, api_key=EXPLICIT_TOKEN)
    root = _sync_life(client, server, evidence)
    evidence.budget(root)
    assert root.calls + root.failed_calls >= 4


def test_no_token_when_the_client_takes_it_from_hf_token(
    server: FakeInferenceServer, evidence: Evidence
) -> None:
    client = InferenceClient(base_url=server.url)
    root = _sync_life(client, server, evidence)
    evidence.budget(root)


async def test_no_token_from_the_async_client(
    server: FakeInferenceServer, evidence: Evidence, aclosing: Any
) -> None:
    client = aclosing(AsyncInferenceClient(base_url=server.url, api_key=EXPLICIT_TOKEN))
    async with budget(max_usd=0.5, price_per_1k_tokens=PRICES, warn_at=0.1) as b:
        await client.chat_completion(MESSAGES, max_tokens=5)
        stream = await client.chat_completion(MESSAGES, max_tokens=5, stream=True)
        async for _ in stream:
            pass
        server.fail_next(403, {"error": "forbidden"})
        try:
            await client.chat_completion(MESSAGES, max_tokens=5)
        except Exception as exc:
            evidence.exception(exc)
        try:
            await client.chat_completion(MESSAGES, max_tokens=5000)
        except BudgetExceededError as exc:
            evidence.exception(exc)
    await client.close()
    evidence.budget(b)


def test_no_token_in_text_generation(server: FakeInferenceServer, evidence: Evidence) -> None:
    client = InferenceClient(model=server.url, api_key=EXPLICIT_TOKEN)
    with budget(max_usd=0.5, price_per_1k_tokens=PRICES) as b:
        client.text_generation("hello there", max_new_tokens=5)
        list(client.text_generation("hello there", max_new_tokens=5, stream=True))
        try:
            client.text_generation("hello there", max_new_tokens=5000)
        except BudgetExceededError as exc:
            evidence.exception(exc)
    evidence.budget(b)


def test_no_token_in_construction_errors(evidence: Evidence) -> None:
    """Bad arguments are echoed in errors; an api_key is never one of them, but a budget's own values are."""
    from shekel import BudgetConfigError

    for bad in ({"max_usd": -1}, {"price_per_1k_tokens": {"input": "x", "output": 1}}, {"warn_at": 2}):
        try:
            budget(**bad)  # type: ignore[arg-type]
        except BudgetConfigError as exc:
            evidence.exception(exc)


def test_the_life_really_produces_warnings_logs_and_errors(
    server: FakeInferenceServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The evidence the tests above search is not empty: warnings fire, errors are raised, logs are written."""
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    caplog.set_level(logging.DEBUG)
    found = Evidence()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = _sync_life(InferenceClient(base_url=server.url, api_key=EXPLICIT_TOKEN), server, found)
    messages = [str(w.message) for w in caught]
    assert any("warn_at" in m for m in messages), messages
    assert any("no price" in m for m in messages), messages
    assert sum("BudgetExceededError" in t for t in found.texts) >= 2
    assert any("401" in t for t in found.texts) and any("503" in t for t in found.texts)
    assert caplog.records  # huggingface_hub and httpx log each request
    assert root.calls + root.failed_calls >= 4


def test_no_password_from_an_endpoint_url_with_credentials(
    server: FakeInferenceServer, evidence: Evidence
) -> None:
    """A self-hosted endpoint behind basic auth: ``http://user:<token>@host``. The URL is the model id that
    shekel records and names in errors, so its credentials must be dropped there (they still reach the server)."""
    url = server.url.replace("http://", f"http://user:{EXPLICIT_TOKEN}@")
    chat = InferenceClient(base_url=url)
    text = InferenceClient(model=url)
    with budget(max_usd=0.5, price_per_1k_tokens=PRICES) as b:
        chat.chat_completion(MESSAGES, max_tokens=3)
        assert server.requests[-1].headers["authorization"].startswith("Basic ")
        text.text_generation("hello there", max_new_tokens=3)
        for _ in chat.chat_completion(MESSAGES, max_tokens=3, stream=True):
            pass
        for client, call in ((chat, "chat"), (text, "text")):
            try:
                if call == "chat":
                    client.chat_completion(MESSAGES, max_tokens=5000)
                else:
                    client.text_generation("hello there", max_new_tokens=5000)
            except BudgetExceededError as exc:
                evidence.exception(exc)
            else:
                raise AssertionError("5000 tokens do not fit")
    evidence.budget(b)
    assert {r.model for r in b.records} == {server.url}
