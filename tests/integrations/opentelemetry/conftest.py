"""Fixtures of the OpenTelemetry tests: the real SDK, with an in-memory metric reader and span exporter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shekel.integrations.opentelemetry import ShekelInstrumentor


@dataclass
class Telemetry:
    """What an instrumented test reports, read back from the SDK."""

    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, point)`` of every data point of the metric ``name`` (none when not reported)."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def value(self, name: str, **attributes: Any) -> Any:
        """The one point of ``name`` with these attributes among its own: a counter's or a gauge's value, or
        a histogram's point (its ``sum``, ``count``, ...)."""
        matching = [
            p for attrs, p in self.points(name) if all(attrs.get(k) == v for k, v in attributes.items())
        ]
        assert len(matching) == 1, f"{name} {attributes}: {len(matching)} points"
        point = matching[0]
        return point.value if hasattr(point, "value") else point

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """``ShekelInstrumentor`` instrumented with fresh SDK providers for the test, uninstrumented after it."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ShekelInstrumentor()
    instrumentor.uninstrument()
    instrumentor.instrument(meter_provider=meter_provider, tracer_provider=tracer_provider)
    yield Telemetry(meter_provider, tracer_provider, reader, exporter)
    instrumentor.uninstrument()
    meter_provider.shutdown()
    tracer_provider.shutdown()
