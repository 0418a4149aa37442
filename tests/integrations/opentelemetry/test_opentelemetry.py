"""ShekelInstrumentor: real huggingface_hub calls to the local server, reported through the real SDK."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from shekel import BudgetExceededError, PricingError, budget
from shekel import _events as events
from shekel.integrations.opentelemetry import ShekelInstrumentor
from shekel.testing import FakeInferenceServer

if TYPE_CHECKING:
    from conftest import Telemetry

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient

from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi there"}]  # the server counts 2 words + 3 = 5 prompt tokens
MODEL = "test/model"


def cost(prompt: int, completion: int) -> Decimal:
    return Decimal("0.001") * prompt + Decimal("0.002") * completion


def chat(client: Any, **kwargs: Any) -> Any:
    return client.chat_completion(MESSAGES, model=MODEL, **kwargs)


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


# ------------------------------------------------------------------------------------------ instrumenting
def test_instrument_is_idempotent_and_uninstrument_restores_the_listeners_exactly() -> None:
    instrumentor = ShekelInstrumentor()
    instrumentor.uninstrument()
    before = events._listeners
    assert ShekelInstrumentor() is instrumentor  # one per process, as OpenTelemetry's instrumentors
    assert not instrumentor.is_instrumented_by_opentelemetry
    instrumentor.instrument()
    added = events._listeners
    assert len(added) == len(before) + 1 and added[: len(before)] == before
    instrumentor.instrument()
    ShekelInstrumentor().instrument()
    assert events._listeners == added and instrumentor.is_instrumented_by_opentelemetry
    instrumentor.uninstrument()
    assert events._listeners == before and not instrumentor.is_instrumented_by_opentelemetry
    instrumentor.uninstrument()
    assert events._listeners == before
    assert list(instrumentor.instrumentation_dependencies()) == []


def test_after_uninstrument_nothing_is_reported(telemetry: Telemetry, server: FakeInferenceServer) -> None:
    ShekelInstrumentor().uninstrument()
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        chat(InferenceClient(base_url=server.url), max_tokens=3)
    assert b.calls == 1
    assert telemetry.spans() == [] and telemetry.points("shekel.cost") == []


def test_a_second_instrument_keeps_the_first_providers(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    other, exporter = TracerProvider(), InMemorySpanExporter()
    other.add_span_processor(SimpleSpanProcessor(exporter))
    ShekelInstrumentor().instrument(tracer_provider=other)
    with budget(max_usd=1, price_per_1k_tokens=PRICES):
        chat(InferenceClient(base_url=server.url), max_tokens=3)
    assert len(telemetry.spans()) == 1 and exporter.get_finished_spans() == ()


def test_instrumenting_again_with_the_same_providers_reports_again(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES, name="first"):
        chat(client, max_tokens=2)
    assert telemetry.value("shekel.budget.spent", **{"shekel.budget": "first"}) == float(cost(5, 2))
    ShekelInstrumentor().uninstrument()
    assert telemetry.points("shekel.budget.spent") == []  # the gauges observe nothing while off
    ShekelInstrumentor().instrument(
        meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider
    )
    with budget(max_usd=1, price_per_1k_tokens=PRICES, name="second"):
        chat(client, max_tokens=3)
    assert telemetry.value("shekel.budget.spent", **{"shekel.budget": "second"}) == float(cost(5, 3))
    assert telemetry.value("shekel.cost", **{"shekel.budget": "second"}) == float(cost(5, 3))
    assert len(telemetry.spans()) == 2


# ------------------------------------------------------------------------------------------ counted calls
def test_a_chat_call_reports_tokens_duration_cost_and_a_span(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES, name="job") as b:
        chat(client, max_tokens=7)
        chat(client, max_tokens=3)
    assert b.spent_exact == cost(5, 7) + cost(5, 3)

    call = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "huggingface",
        "gen_ai.request.model": MODEL,
    }
    inputs = telemetry.value("gen_ai.client.token.usage", **call, **{"gen_ai.token.type": "input"})
    outputs = telemetry.value("gen_ai.client.token.usage", **call, **{"gen_ai.token.type": "output"})
    assert (inputs.count, inputs.sum, outputs.count, outputs.sum) == (2, 10, 2, 10)
    assert {tuple(sorted(a.items())) for a, _ in telemetry.points("gen_ai.client.token.usage")} == {
        tuple(sorted({**call, "gen_ai.token.type": t}.items())) for t in ("input", "output")
    }
    duration = telemetry.value("gen_ai.client.operation.duration", **call)
    assert duration.count == 2 and duration.sum > 0
    assert "error.type" not in only(telemetry.points("gen_ai.client.operation.duration"))[0]
    assert telemetry.value("shekel.cost", **call, **{"shekel.budget": "job"}) == pytest.approx(
        float(b.spent_exact)
    )
    assert telemetry.value("shekel.budget.spent", **{"shekel.budget": "job"}) == float(b.spent_exact)
    assert telemetry.value("shekel.budget.remaining", **{"shekel.budget": "job"}) == float(1 - b.spent_exact)
    assert telemetry.value("shekel.budget.utilization", **{"shekel.budget": "job"}) == float(b.spent_exact)
    assert telemetry.value("shekel.budget.reserved", **{"shekel.budget": "job"}) == 0

    first, second = telemetry.spans()
    assert first.name == second.name == f"chat {MODEL}"
    assert first.kind is SpanKind.CLIENT and first.status.status_code is StatusCode.UNSET
    assert dict(first.attributes or {}) == {
        **call,
        "gen_ai.system": "huggingface",
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.usage.cost.amount": float(cost(5, 7)),
        "gen_ai.usage.cost.currency": "USD",
        "shekel.cost_usd": str(cost(5, 7)),
        "shekel.budget": "job",
        "shekel.outcome": "ok",
        "shekel.estimated": False,
        "shekel.priced": True,
        "shekel.streamed": False,
    }
    assert Decimal(str((second.attributes or {})["shekel.cost_usd"])) == cost(5, 3)
    assert first.end_time is not None and first.start_time is not None
    assert first.end_time > first.start_time and second.start_time >= first.end_time  # type: ignore[operator]


def test_the_span_is_a_child_of_the_span_current_at_the_call(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with budget(max_usd=1, price_per_1k_tokens=PRICES), tracer.start_as_current_span("handle request") as job:
        chat(InferenceClient(base_url=server.url), max_tokens=3)
    ours, theirs = telemetry.spans()
    assert theirs.name == "handle request" and ours.name == f"chat {MODEL}"
    assert ours.parent is not None and ours.parent.span_id == job.get_span_context().span_id
    assert ours.context.trace_id == job.get_span_context().trace_id  # type: ignore[union-attr]


async def test_async_calls_are_reported(
    telemetry: Telemetry, server: FakeInferenceServer, aclosing: Any
) -> None:
    client = aclosing(AsyncInferenceClient(base_url=server.url))
    async with budget(max_usd=1, price_per_1k_tokens=PRICES, name="async") as b:
        await chat(client, max_tokens=4)
    assert b.spent_exact == cost(5, 4)
    span = only(telemetry.spans())
    assert span.attributes["gen_ai.usage.output_tokens"] == 4
    assert span.attributes["shekel.cost_usd"] == str(cost(5, 4))
    assert telemetry.value("shekel.cost", **{"shekel.budget": "async"}) == float(cost(5, 4))


def test_a_stream_is_reported_when_it_ends(telemetry: Telemetry, server: FakeInferenceServer) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        client = InferenceClient(base_url=server.url)
        stream = iter(chat(client, max_tokens=6, stream=True))
        next(stream)
        assert telemetry.spans() == []  # not settled yet: nothing to report
        chunks = 1 + sum(1 for _ in stream)
    assert chunks >= 6 and b.spent_exact == cost(5, 6)
    span = only(telemetry.spans())
    assert span.attributes["shekel.streamed"] is True
    assert (span.attributes["gen_ai.usage.input_tokens"], span.attributes["gen_ai.usage.output_tokens"]) == (
        5,
        6,
    )
    outputs = telemetry.value("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})
    assert (outputs.count, outputs.sum) == (1, 6)


async def test_an_async_stream_is_reported_when_it_ends(
    telemetry: Telemetry, server: FakeInferenceServer, aclosing: Any
) -> None:
    client = aclosing(AsyncInferenceClient(base_url=server.url))
    async with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        async for _ in await chat(client, max_tokens=5, stream=True):
            pass
    assert b.spent_exact == cost(5, 5)
    span = only(telemetry.spans())
    assert span.attributes["shekel.streamed"] is True and span.attributes["shekel.cost_usd"] == str(
        cost(5, 5)
    )


def test_text_generation_is_a_text_completion(telemetry: Telemetry, server: FakeInferenceServer) -> None:
    with budget(max_usd=1, price_per_1k_tokens=PRICES):
        InferenceClient(model=server.url).text_generation("once upon a time", max_new_tokens=4)
    span = only(telemetry.spans())
    assert span.name == f"text_completion {server.url}"
    assert span.attributes["gen_ai.operation.name"] == "text_completion"
    assert (
        telemetry.value(
            "gen_ai.client.token.usage",
            **{"gen_ai.operation.name": "text_completion"},
            **{"gen_ai.token.type": "output"},
        ).sum
        == 4
    )


def test_the_inference_provider_that_served_the_call_is_the_provider(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    server.headers["x-inference-provider"] = "together"
    with budget(max_usd=1, price_per_1k_tokens=PRICES):
        chat(InferenceClient(base_url=server.url), max_tokens=2)
    span = only(telemetry.spans())
    assert span.attributes["gen_ai.provider.name"] == span.attributes["gen_ai.system"] == "together"
    assert telemetry.value("shekel.cost", **{"gen_ai.provider.name": "together"}) == float(cost(5, 2))


def test_an_error_answer_is_an_error_span_and_costs_nothing(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    server.fail_next(500)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b, pytest.raises(Exception, match="500"):
        chat(InferenceClient(base_url=server.url), max_tokens=2)
    assert b.failed_calls == 1 and b.spent_exact == 0
    span = only(telemetry.spans())
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["shekel.outcome"] == "error" and span.attributes["error.type"] == "_OTHER"
    assert span.attributes["shekel.cost_usd"] == "0"
    assert telemetry.points("gen_ai.client.token.usage") == []  # no usage to report
    assert telemetry.value("gen_ai.client.operation.duration", **{"error.type": "_OTHER"}).count == 1


# ------------------------------------------------------------------------------------------ refusals
def test_a_refused_call_is_an_error_span_with_its_reason(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    with budget(max_usd=0.1, price_per_1k_tokens=PRICES, name="tight") as b:
        chat(InferenceClient(base_url=server.url), max_tokens=3)
        with pytest.raises(BudgetExceededError) as refused:
            chat(InferenceClient(base_url=server.url), max_tokens=500)
    assert server.request_count == 1 and b.calls == 1

    answered, span = telemetry.spans()
    assert answered.status.status_code is StatusCode.UNSET
    assert span.name == f"chat {MODEL}" and span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.ERROR and span.status.description == str(refused.value)
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
        "shekel.budget": "tight",
        "shekel.refusal.reason": "usd",
        "shekel.refusal.budget": "tight",
        "shekel.refusal.needed_usd": refused.value.needed,
        "shekel.refusal.limit_usd": 0.1,
        "shekel.refusal.spent_usd": float(cost(5, 3)),
        "error.type": "BudgetExceededError",
    }
    (exception,) = span.events
    assert exception.name == "exception"
    assert exception.attributes["exception.type"] == "shekel.errors.BudgetExceededError"  # type: ignore[index]
    assert (
        telemetry.value(
            "shekel.budget.refusals", **{"shekel.budget": "tight", "shekel.refusal.reason": "usd"}
        )
        == 1
    )
    assert telemetry.value("shekel.cost", **{"shekel.budget": "tight"}) == float(cost(5, 3))


def test_refusals_are_counted_by_reason(telemetry: Telemetry, server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_llm_calls=1, price_per_1k_tokens=PRICES, name="calls"):
        chat(client, max_tokens=1)
        for _ in range(2):
            with pytest.raises(BudgetExceededError):
                chat(client, max_tokens=1)
    with budget(max_usd=1, on_unknown_price="raise", name="priced"), pytest.raises(PricingError):
        chat(client, max_tokens=1)
    assert server.request_count == 1
    assert (
        telemetry.value(
            "shekel.budget.refusals", **{"shekel.budget": "calls", "shekel.refusal.reason": "calls"}
        )
        == 2
    )
    assert (
        telemetry.value(
            "shekel.budget.refusals", **{"shekel.budget": "priced", "shekel.refusal.reason": "price"}
        )
        == 1
    )
    priced = telemetry.spans()[-1]
    assert priced.attributes["error.type"] == "PricingError" and priced.status.status_code is StatusCode.ERROR


# ------------------------------------------------------------------------------------------ nested and shared
def test_nested_budgets_count_the_cost_once_and_report_each_budget(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES, name="run") as run:
        chat(client, max_tokens=2)
        with budget(max_usd=0.5, name="step") as step:
            chat(client, max_tokens=3)
            chat(client, max_tokens=4)
    assert run.spent_exact == cost(5, 2) + cost(5, 3) + cost(5, 4)
    costs = {a["shekel.budget"]: p.value for a, p in telemetry.points("shekel.cost")}
    assert costs == {"run": float(cost(5, 2)), "run/step": pytest.approx(float(cost(5, 3) + cost(5, 4)))}
    assert telemetry.value("shekel.budget.spent", **{"shekel.budget": "run"}) == float(run.spent_exact)
    assert telemetry.value("shekel.budget.spent", **{"shekel.budget": "run/step"}) == float(step.spent_exact)
    assert telemetry.value("shekel.budget.utilization", **{"shekel.budget": "run/step"}) == float(
        step.spent_exact / Decimal("0.5")
    )
    assert [s.attributes["shekel.budget"] for s in telemetry.spans()] == ["run", "run/step", "run/step"]


def test_a_shared_budget_reports_what_every_process_spent(
    telemetry: Telemetry, server: FakeInferenceServer, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'budgets.db'}"
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, name="team", store=store, price_per_1k_tokens=PRICES):
        chat(client, max_tokens=3)
    # Another holder of the same shared budget (as another process would open it) sees the first's spend.
    with budget(max_usd=1, name="team", store=store, price_per_1k_tokens=PRICES) as later:
        chat(client, max_tokens=4)
        assert later.spent_exact == cost(5, 3) + cost(5, 4)
    assert telemetry.value("shekel.budget.spent", **{"shekel.budget": "team"}) == float(
        cost(5, 3) + cost(5, 4)
    )
    assert telemetry.value("shekel.budget.utilization", **{"shekel.budget": "team"}) == float(
        cost(5, 3) + cost(5, 4)
    )
    assert telemetry.value("shekel.cost", **{"shekel.budget": "team"}) == pytest.approx(
        float(cost(5, 3) + cost(5, 4))
    )
    assert len(telemetry.spans()) == 2


# ------------------------------------------------------------------------------------------ another instrumentation
def test_the_span_of_another_instrumentation_gets_the_attributes(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    other = telemetry.tracer_provider.get_tracer("another.genai.instrumentation")
    genai = {"gen_ai.operation.name": "chat", "gen_ai.request.model": MODEL, "gen_ai.provider.name": "hf"}
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES):
        with other.start_as_current_span(f"chat {MODEL}", attributes=genai):
            chat(client, max_tokens=3)
            chat(client, max_tokens=2)  # a second call under the same span: it has a cost already
        with other.start_as_current_span(
            "chat another/model", attributes={**genai, "gen_ai.request.model": "x"}
        ):
            chat(client, max_tokens=1)  # another model's span: not this call's
    second, theirs, third, unrelated = telemetry.spans()
    assert theirs.instrumentation_scope.name == "another.genai.instrumentation"  # type: ignore[union-attr]
    attributes = dict(theirs.attributes or {})
    assert attributes["gen_ai.provider.name"] == "hf"  # theirs is kept
    assert attributes["shekel.cost_usd"] == str(cost(5, 3)) and attributes["gen_ai.usage.output_tokens"] == 3
    assert (
        second.attributes["shekel.cost_usd"] == str(cost(5, 2))
        and second.parent.span_id == theirs.context.span_id
    )  # type: ignore[union-attr]
    assert "shekel.cost_usd" not in (unrelated.attributes or {})
    assert (
        third.attributes["gen_ai.usage.output_tokens"] == 1
        and third.parent.span_id == unrelated.context.span_id
    )  # type: ignore[union-attr]
    assert telemetry.value("shekel.cost") == pytest.approx(float(cost(5, 3) + cost(5, 2) + cost(5, 1)))


# ------------------------------------------------------------------------------------------ secrets
def test_no_credential_of_a_model_url_reaches_an_attribute(
    telemetry: Telemetry, server: FakeInferenceServer
) -> None:
    secret = "hf_secretTOKEN123"
    endpoint = server.url.replace("http://", f"http://user:{secret}@") + f"/?api_key={secret}"
    with budget(max_usd=1, price_per_1k_tokens=PRICES):
        InferenceClient(model=endpoint).chat_completion(MESSAGES, max_tokens=2)
        with pytest.raises(BudgetExceededError):
            InferenceClient(model=endpoint).chat_completion(MESSAGES, max_tokens=5000)
    spans = telemetry.spans()
    assert len(spans) == 2
    exported = repr([(s.name, dict(s.attributes or {}), s.status.description, s.events) for s in spans])
    exported += repr(telemetry.reader.get_metrics_data())
    assert "127.0.0.1" in exported and secret not in exported


# ------------------------------------------------------------------------------------------ packaging
def test_global_providers_are_used_when_none_is_given() -> None:
    code = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from huggingface_hub import InferenceClient
from shekel import budget
from shekel.integrations.opentelemetry import ShekelInstrumentor
from shekel.testing import FakeInferenceServer

reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(tracer_provider)
ShekelInstrumentor().instrument()
with FakeInferenceServer() as server, budget(max_usd=1, price_per_1k_tokens={"input": 1, "output": 2}):
    InferenceClient(base_url=server.url).chat_completion([{"role": "user", "content": "hi"}], max_tokens=2)
names = sorted(m.name for r in reader.get_metrics_data().resource_metrics for s in r.scope_metrics for m in s.metrics)
print(len(exporter.get_finished_spans()), " ".join(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [
        "1",
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "shekel.budget.remaining",
        "shekel.budget.reserved",
        "shekel.budget.spent",
        "shekel.budget.utilization",
        "shekel.cost",
    ]


def test_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import shekel.integrations\n"
        "try:\n    import shekel.integrations.opentelemetry\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (
        out.strip() == 'shekel.integrations.opentelemetry needs opentelemetry-api: pip install "shekel[otel]"'
    )


def test_importing_shekel_imports_no_opentelemetry() -> None:
    code = "import sys, shekel; shekel.budget(max_usd=1).__enter__(); print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_telemetry_that_fails_does_not_touch_the_budget(server: FakeInferenceServer) -> None:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class Broken(SpanProcessor):
        def on_end(self, span: Any) -> None:
            raise RuntimeError("exporter down")

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(Broken())
    instrumentor = ShekelInstrumentor()
    instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
            chat(InferenceClient(base_url=server.url), max_tokens=3)
            with pytest.raises(BudgetExceededError):
                chat(InferenceClient(base_url=server.url), max_tokens=5000)
    finally:
        instrumentor.uninstrument()
    assert b.calls == 1 and b.spent_exact == cost(5, 3) and server.request_count == 1


# ------------------------------------------------------------------------------------------ with an integration
async def test_a_langchain_call_is_reported_once(telemetry: Telemetry, server: FakeInferenceServer) -> None:
    pytest.importorskip("langchain_huggingface")
    from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint

    endpoint = HuggingFaceEndpoint(endpoint_url=server.url, max_new_tokens=5)
    try:
        with budget(max_usd=1, price_per_1k_tokens=PRICES, name="chain") as b:
            ChatHuggingFace(llm=endpoint).invoke("hello there")
            await ChatHuggingFace(llm=endpoint).ainvoke("hello there")
    finally:
        await endpoint.async_client.close()
    assert b.calls == 2 and server.request_count == 2
    spans = telemetry.spans()
    assert len(spans) == 2 and all(s.attributes["shekel.budget"] == "chain" for s in spans)
    assert sum(Decimal(str(s.attributes["shekel.cost_usd"])) for s in spans) == b.spent_exact
    assert telemetry.value("shekel.cost", **{"shekel.budget": "chain"}) == pytest.approx(float(b.spent_exact))


def test_the_gauges_report_the_most_recently_charged_budgets(
    telemetry: Telemetry, server: FakeInferenceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shekel.integrations import opentelemetry as otel

    monkeypatch.setattr(otel, "MAX_GAUGED_BUDGETS", 2)
    client = InferenceClient(base_url=server.url)
    for name in ("a", "b", "a", "c"):
        with budget(max_usd=1, price_per_1k_tokens=PRICES, name=name):
            chat(client, max_tokens=1)
    assert sorted(a["shekel.budget"] for a, _ in telemetry.points("shekel.budget.spent")) == ["a", "c"]
    assert len(telemetry.points("shekel.cost")) == 3  # the counters keep every budget
