"""Every ``InferenceClient`` task is a counted call: through the real client over HTTP to the local server.

Token tasks are charged their estimated input tokens (and output tokens for summaries and translations) at
the model's token price; media tasks the ``per_call`` part of its price, else the unknown-price policy.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import shekel
from shekel import BudgetExceededError, PricingError, budget
from shekel._tokenizer import text_prompt_estimates
from shekel.adapters._hf_tasks import DEFAULT_MAX_OUTPUT_TOKENS, TASKS
from shekel.testing import FakeInferenceServer

from ..testing.test_fake_server_hf_tasks import CASES, PNG, TABLE

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("numpy")
pytest.importorskip("PIL.Image")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient

TOKEN_PRICE = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
PER_CALL = {"per_call": 0.003}
INPUT, OUTPUT = Decimal("0.001"), Decimal("0.002")

#: One call of each task method, by method name (the fake server's cases name the Hub's task).
BY_METHOD: dict[str, Callable[[Any], Any]] = {}
for _task, _call, *_ in CASES:
    BY_METHOD.setdefault(_task.replace("-", "_"), _call)
#: Tasks the local server answers for a client pointed at a task URL (video needs a provider, and
#: tabular regression has none in huggingface_hub).
LOCAL = sorted(BY_METHOD)


def _reads_the_servers_answer(method: str) -> bool:
    """Older huggingface_hub (1.0) read zero-shot answers in hf-inference's former shape, not the list the
    local server sends."""
    if method != "zero_shot_classification":
        return True
    original = InferenceClient.zero_shot_classification
    return 'output["labels"]' not in inspect.getsource(getattr(original, "__shekel_original__", original))


LOCAL = [m for m in LOCAL if _reads_the_servers_answer(m)]


def _together_serves(task: str) -> bool:
    from huggingface_hub.inference._providers import PROVIDERS

    return task in PROVIDERS.get("together", {})


# huggingface_hub's AsyncInferenceClient posts raw files with httpx's deprecated ``data=<bytes>``.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


def url(server: FakeInferenceServer, method: str) -> str:
    return server.task_url(TASKS[method].name)


def prompt_tokens(method: str, client: Any) -> int:
    """The input tokens shekel estimates for BY_METHOD[method] (the texts its task prices)."""
    texts = {
        "feature_extraction": ["one two three"],
        "sentence_similarity": ["a cat sat", "a cat sat", "dogs bark"],
        "summarization": ["a long text to cut"],
        "translation": ["hello world"],
        "text_classification": ["what a day"],
        "token_classification": ["Ada Lovelace wrote programs"],
        "fill_mask": ["The capital of France is [MASK] ."],
        "question_answering": ["who wrote it", "Ada wrote the first program"],
        "zero_shot_classification": ["I love this", "positive", "negative"],
        "table_question_answering": [
            "who came first",
            *TABLE,
            *[cell for column in TABLE.values() for cell in column],
        ],
    }[method]
    return sum(text_prompt_estimates(client.model, text)[1] for text in texts)


# ------------------------------------------------------------------------------------------ patching
def test_every_task_method_is_in_the_table() -> None:
    counted_precisely = {"chat_completion", "text_generation"}
    not_calls = {"chat", "close", "get_endpoint_info", "health_check"}
    for cls in (InferenceClient, AsyncInferenceClient):
        public = {name for name in dir(cls) if not name.startswith("_")}
        assert public - counted_precisely - not_calls == set(TASKS)


def test_install_patches_every_task_and_uninstall_restores_the_exact_originals() -> None:
    shekel.uninstall()
    names = [*TASKS, "chat_completion", "text_generation", "_inner_post"]
    originals = {(cls, n): cls.__dict__[n] for cls in (InferenceClient, AsyncInferenceClient) for n in names}
    shekel.install()
    patched = {key: key[0].__dict__[key[1]] for key in originals}
    assert all(patched[key] is not originals[key] for key in originals)
    assert all(patched[key].__shekel_original__ is originals[key] for key in originals)
    shekel.install()
    assert all(key[0].__dict__[key[1]] is patched[key] for key in originals)
    shekel.uninstall()
    shekel.uninstall()
    assert all(key[0].__dict__[key[1]] is originals[key] for key in originals)
    shekel.install()


def test_token_and_media_tasks_are_split_as_documented() -> None:
    token = {name for name, task in TASKS.items() if not task.media}
    assert token == {
        "feature_extraction",
        "sentence_similarity",
        "summarization",
        "translation",
        "text_classification",
        "token_classification",
        "fill_mask",
        "question_answering",
        "zero_shot_classification",
        "table_question_answering",
    }


# ------------------------------------------------------------------------------------------ counted, priced
@pytest.mark.parametrize("method", LOCAL)
def test_each_task_is_a_call_charged_exactly(server: FakeInferenceServer, method: str) -> None:
    task = TASKS[method]
    with InferenceClient(model=url(server, method), token="hf_test") as client:
        price = PER_CALL if task.media else TOKEN_PRICE
        with budget(max_usd=10, max_llm_calls=5, price_per_1k_tokens=price) as b:
            BY_METHOD[method](client)
        expected_input = 0 if task.media else prompt_tokens(method, client)
    assert b.calls == 1 and server.request_count == 1
    record = b.records[-1]
    assert record.source == f"huggingface_hub.{task.name}"
    assert record.priced
    if task.media:
        assert (record.input_tokens, record.output_tokens) == (0, 0)
        assert b.spent_exact == record.cost == Decimal("0.003")
        assert not record.estimated
    else:
        assert record.input_tokens == expected_input > 0
        assert record.estimated
        assert record.cost == INPUT * record.input_tokens + OUTPUT * record.output_tokens == b.spent_exact
        assert (record.output_tokens > 0) == (task.output is not None)


@pytest.mark.parametrize("method", ["summarization", "translation"])
def test_summaries_and_translations_pay_their_output(server: FakeInferenceServer, method: str) -> None:
    with InferenceClient(model=url(server, method), token="hf_test") as client:
        with budget(max_usd=10, price_per_1k_tokens=TOKEN_PRICE) as b:
            answer = BY_METHOD[method](client)
    text = answer.summary_text if method == "summarization" else answer.translation_text
    record = b.records[-1]
    # No usage in the answer: estimated from its text, and never above the caller's limit (max_new_tokens=4).
    limit = 4 if method == "summarization" else DEFAULT_MAX_OUTPUT_TOKENS
    assert record.output_tokens == min(-(-len(text) // 4), limit) > 0
    assert record.cost == INPUT * record.input_tokens + OUTPUT * record.output_tokens


def test_a_summary_is_reserved_at_the_callers_limit_or_the_default(server: FakeInferenceServer) -> None:
    held: list[Decimal] = []
    with InferenceClient(model=url(server, "summarization"), token="hf_test") as client:
        with budget(max_usd=10, price_per_1k_tokens=TOKEN_PRICE) as b:
            original = b.reserve_call

            def spy(ask: Any, *args: Any, **kwargs: Any) -> Any:
                held.append(Decimal(ask[2]))
                return original(ask, *args, **kwargs)

            b.reserve_call = spy  # type: ignore[method-assign]
            client.summarization("a long text to cut", generate_parameters={"max_new_tokens": 4})
            client.summarization("a long text to cut")
    assert held == [4, DEFAULT_MAX_OUTPUT_TOKENS]
    # The default is not sent: the answer is what it would be without shekel.
    assert "max_new_tokens" not in str(server.requests[-1].body)


def test_a_per_call_price_is_added_to_a_token_tasks_tokens(server: FakeInferenceServer) -> None:
    with InferenceClient(model=url(server, "feature_extraction"), token="hf_test") as client:
        with budget(price_per_1k_tokens={"input": 1, "output": 2, "per_call": 0.5}) as b:
            client.feature_extraction("one two three")
    record = b.records[-1]
    assert record.cost == Decimal("0.5") + INPUT * record.input_tokens


def test_a_token_task_with_only_a_per_call_price_pays_that(server: FakeInferenceServer) -> None:
    with InferenceClient(model=url(server, "fill_mask"), token="hf_test") as client:
        with budget(price_per_1k_tokens=PER_CALL) as b:
            client.fill_mask("a [MASK] b")
    assert b.spent_exact == Decimal("0.003")


@pytest.mark.parametrize("method", LOCAL)
async def test_each_task_async_is_a_call_charged_exactly(
    server: FakeInferenceServer, method: str, aclosing: Any
) -> None:
    task = TASKS[method]
    client = aclosing(AsyncInferenceClient(model=url(server, method), token="hf_test"))
    price = PER_CALL if task.media else TOKEN_PRICE
    async with budget(max_usd=10, max_llm_calls=1, price_per_1k_tokens=price) as b:
        await BY_METHOD[method](client)
        with pytest.raises(BudgetExceededError):
            await BY_METHOD[method](client)
    assert b.calls == 1 and server.request_count == 1
    record = b.records[-1]
    assert record.source == f"huggingface_hub.{task.name}"
    if task.media:
        assert b.spent_exact == Decimal("0.003")
    else:
        assert record.input_tokens == prompt_tokens(method, client)
        assert record.cost == INPUT * record.input_tokens + OUTPUT * record.output_tokens == b.spent_exact


# ------------------------------------------------------------------------------------------ refused first
@pytest.mark.parametrize("method", LOCAL)
def test_the_call_past_max_llm_calls_is_refused_before_it_is_sent(
    server: FakeInferenceServer, method: str
) -> None:
    with InferenceClient(model=url(server, method), token="hf_test") as client:
        with budget(max_llm_calls=1, price_per_1k_tokens={**TOKEN_PRICE, "per_call": 0.003}) as b:
            BY_METHOD[method](client)
            with pytest.raises(BudgetExceededError):
                BY_METHOD[method](client)
    assert server.request_count == 1
    assert b.calls == 1


def test_a_media_task_past_the_dollar_cap_is_refused_before_it_is_sent(server: FakeInferenceServer) -> None:
    with InferenceClient(model=url(server, "text_to_image"), token="hf_test") as client:
        with budget(max_usd=0.005, price_per_1k_tokens=PER_CALL) as b:
            client.text_to_image("a red cat")
            with pytest.raises(BudgetExceededError):
                client.text_to_image("a red cat")
    assert server.request_count == 1
    assert b.spent_exact == Decimal("0.003")


# ------------------------------------------------------------------------------------------ unknown prices
def test_a_media_task_with_only_a_token_price_is_refused_under_raise(server: FakeInferenceServer) -> None:
    with InferenceClient(model=url(server, "text_to_image"), token="hf_test") as client:
        with budget(max_usd=1, price_per_1k_tokens=TOKEN_PRICE, on_unknown_price="raise") as b:
            with pytest.raises(PricingError, match="per-call price for text-to-image"):
                client.text_to_image("a red cat")
    assert server.request_count == 0
    assert b.calls == 0


def test_a_media_task_with_only_a_token_price_warns_and_counts_as_unpriced(
    server: FakeInferenceServer,
) -> None:
    with InferenceClient(model=url(server, "image_classification"), token="hf_test") as client:
        with pytest.warns(UserWarning, match="per_call"):
            with budget(max_usd=1, price_per_1k_tokens=TOKEN_PRICE) as b:
                client.image_classification(PNG)
    assert b.calls == 1 and b.unpriced_calls == 1
    assert b.spent_exact == 0
    assert not b.records[-1].priced


def test_a_media_task_under_zero_is_free_without_a_warning(server: FakeInferenceServer) -> None:
    with InferenceClient(model=url(server, "text_to_speech"), token="hf_test") as client:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with budget(max_usd=1, max_llm_calls=1, on_unknown_price="zero") as b:
                client.text_to_speech("hello there")
                with pytest.raises(BudgetExceededError):
                    client.text_to_speech("hello there")
    assert b.calls == 1 and b.spent_exact == 0 and server.request_count == 1


def test_an_unpriced_token_task_follows_the_policy(server: FakeInferenceServer) -> None:
    with InferenceClient(model=url(server, "feature_extraction"), token="hf_test") as client:
        with budget(max_usd=1, on_unknown_price="raise"):
            with pytest.raises(PricingError, match="no price for model"):
                client.feature_extraction("one two three")
    assert server.request_count == 0


# ------------------------------------------------------------------------------------------ failures
def test_an_error_answer_counts_as_a_failed_call_and_costs_nothing(server: FakeInferenceServer) -> None:
    server.fail_next(503)
    with InferenceClient(model=url(server, "text_to_image"), token="hf_test") as client:
        with budget(max_usd=1, max_llm_calls=1, price_per_1k_tokens=PER_CALL) as b:
            with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
                client.text_to_image("a red cat")
            with pytest.raises(BudgetExceededError):
                client.text_to_image("a red cat")
    assert (b.calls, b.failed_calls, b.spent_exact, b.reserved) == (0, 1, 0, 0)


# ------------------------------------------------------------------------------------------ counted once
def test_chat_is_counted_once_not_again_by_the_request_below_it(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_llm_calls=1, price_per_1k_tokens=TOKEN_PRICE) as b:
        client.chat_completion([{"role": "user", "content": "hi there"}], max_tokens=5)
    assert b.calls == 1 and b.records[-1].source == "huggingface_hub.chat_completion"


def test_a_method_taken_before_shekel_patched_it_is_counted_by_the_request_it_sends(
    server: FakeInferenceServer,
) -> None:
    # What ``InferenceClient.feature_extraction`` was before shekel was imported.
    original = InferenceClient.__dict__["feature_extraction"].__shekel_original__
    with InferenceClient(model=url(server, "feature_extraction"), token="hf_test") as client:
        with budget(max_llm_calls=1, price_per_1k_tokens=PER_CALL) as b:
            original(client, "one two three")
            with pytest.raises(BudgetExceededError):
                original(client, "one two three")
    assert server.request_count == 1
    assert b.calls == 1 and b.spent_exact == Decimal("0.003")
    assert b.records[-1].source == "huggingface_hub.feature-extraction"


# ------------------------------------------------------------------------------------------ providers
@pytest.fixture
def routed() -> Any:
    with FakeInferenceServer(router="together") as fake, fake.route_huggingface_hub():
        yield fake


def test_media_tasks_on_a_provider_take_the_per_call_price(routed: FakeInferenceServer) -> None:
    routed.hub_models.update(
        {"black-forest-labs/FLUX.1-dev": "text-to-image", "test/text-to-video": "text-to-video"}
    )
    client = InferenceClient(provider="together", api_key="hf_test")
    prices = {"black-forest-labs/FLUX.1-dev": {"per_call": 0.003}, "test/text-to-video": {"per_call": 0.25}}
    video = _together_serves("text-to-video")  # not in huggingface_hub 1.0
    with budget(max_usd=1, price_per_1k_tokens=prices) as b:
        assert client.text_to_image("a red cat", model="black-forest-labs/FLUX.1-dev").format == "PNG"
        if video:  # a job, then its result polled and downloaded: one call
            assert client.text_to_video("a cat playing", model="test/text-to-video")[4:8] == b"ftyp"
    assert b.calls == 1 + video
    assert b.spent_exact == Decimal("0.003") + video * Decimal("0.25")
    assert b.records[0].model == "black-forest-labs/FLUX.1-dev"
    assert all(r.provider == "together" for r in b.records)


# ------------------------------------------------------------------------------------------ prices
def test_a_per_call_price_in_a_pricing_file(server: FakeInferenceServer, tmp_path: Any) -> None:
    file = tmp_path / "prices.toml"
    file.write_text(
        'unit = "per_1m_tokens"\n[models."*"]\nper_call = 0.004\n',
    )
    with InferenceClient(model=url(server, "object_detection"), token="hf_test") as client:
        with budget(max_usd=1, pricing=file) as b:
            client.object_detection(PNG)
    assert b.spent_exact == Decimal("0.004")
    assert "per call" in str(b.price_for(None))


@pytest.mark.parametrize(
    ("price", "error"),
    [
        ({"per_call": -1}, "must not be negative"),
        ({"per_call": "x"}, "per_call"),
        ({"per_call": 1e9}, "per_call"),
        ({"per_call": 0.0000000000001}, "12 decimal places"),
        ({"per_call": 1, "input": 1}, "missing 'output'"),
        ({"per_call": 1, "cached_input": 1}, "missing"),
        ({"per_cal": 1}, "unknown key"),
    ],
)
def test_bad_per_call_prices_are_refused_with_a_fix(price: dict[str, Any], error: str) -> None:
    with pytest.raises(shekel.BudgetConfigError, match=error):
        budget(price_per_1k_tokens={"m": price})
