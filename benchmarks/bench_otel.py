"""8. OpenTelemetry: a counted ``chat_completion`` with ``ShekelInstrumentor`` on vs. off.

The real SDK: a ``MeterProvider`` with an in-memory reader (collected after each batch) and a
``TracerProvider`` whose span processor hands each span to an exporter that drops it, so the figure is what
making the metrics and the span costs, not what an exporter does with them. Both variants run inside the
same kind of budget through the in-process transport; a third, the unpatched client, is the baseline of the
whole. A fourth variant instruments with the API's no-op providers: what shekel's listener itself costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import shekel

from . import _transport
from ._harness import Row, count_calls, median, paired_ratio, time_batches, us

# No target: with the SDK on, the figure is mostly the SDK's own work (five measurements and a span per
# call), which shekel does not control; the no-op row shows shekel's part.


def run(quick: bool = False) -> list[Row]:
    try:
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
        from opentelemetry.trace import NoOpTracerProvider

        from shekel.integrations.opentelemetry import ShekelInstrumentor
    except ImportError:
        return [Row(group="8. otel", name="skipped: opentelemetry-sdk is not installed", baseline="")]

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Dropping()))
    instrumentor = ShekelInstrumentor()
    messages = _transport.MESSAGES

    def variants(client: object) -> dict[str, Callable[[int], object]]:
        def calls(n: int) -> None:
            with shekel.budget(max_usd=1_000_000, price_per_1k_tokens=_transport.PRICES) as b:
                for _ in range(n):
                    client.chat_completion(messages, max_tokens=100)  # type: ignore[attr-defined]
            assert b.calls == n

        def unpatched(n: int) -> None:
            shekel.uninstall()
            for _ in range(n):
                client.chat_completion(messages, max_tokens=100)  # type: ignore[attr-defined]

        def off(n: int) -> None:
            instrumentor.uninstrument()
            calls(n)

        def on(n: int) -> None:
            instrumentor.uninstrument()
            instrumentor.instrument(meter_provider=meter_provider, tracer_provider=tracer_provider)
            calls(n)
            reader.get_metrics_data()  # what a periodic reader would do, once per batch

        def no_op(n: int) -> None:
            instrumentor.uninstrument()
            instrumentor.instrument(meter_provider=NoOpMeterProvider(), tracer_provider=NoOpTracerProvider())
            calls(n)

        return {
            "unpatched": unpatched,
            "instrumentation off": off,
            "instrumentation on": on,
            "instrumentation on, no-op providers": no_op,
        }

    rows = []
    number, repeats = (50, 5) if quick else (100, 21)
    with _transport.in_process():
        table = variants(_transport.client())
        times = time_batches(table, number=number, repeats=repeats)
        counted = {name: count_calls(fn, 20) for name, fn in table.items()}
    instrumentor.uninstrument()
    shekel.uninstall()
    meter_provider.shutdown()
    tracer_provider.shutdown()
    for name, baseline in (
        ("instrumentation on", "instrumentation off"),
        ("instrumentation on, no-op providers", "instrumentation off"),
        ("instrumentation on", "unpatched"),
        ("instrumentation off", "unpatched"),
    ):
        ratio = paired_ratio(times, name, baseline)
        calls_ratio = counted[name] / counted[baseline]
        rows.append(
            Row(
                group="8. otel",
                name=f"chat_completion inside a budget, {name}, in-process",
                baseline=baseline if baseline != "unpatched" else "unpatched client",
                time_text=f"{us(median(times[name]))} vs {us(median(times[baseline]))}",
                time_ratio=ratio,
                wall_ratio=paired_ratio(times.wall, name, baseline),
                calls_text=f"{counted[name]:,.0f} vs {counted[baseline]:,.0f}",
                calls_ratio=calls_ratio,
                extra={"us_added": (median(times[name]) - median(times[baseline])) * 1e6},
            )
        )
    return rows
