"""OpenTelemetry metrics and spans for every call a budget counts: :class:`ShekelInstrumentor`.

    from shekel.integrations.opentelemetry import ShekelInstrumentor

    ShekelInstrumentor().instrument()  # the global meter and tracer providers
    ShekelInstrumentor().instrument(meter_provider=mp, tracer_provider=tp)  # or the ones given
    ShekelInstrumentor().uninstrument()

Needs only ``opentelemetry-api`` (``pip install "shekel[otel]"``); the application brings the SDK and its
exporters. The instrumentor patches nothing: it listens to the budgets' events (``shekel._events``), one
:class:`~shekel._events.Settled` per charged call and one :class:`~shekel._events.Refused` per refusal, so
it sees every call any adapter or integration counts, once, where it was charged.

What it reports (the GenAI semantic conventions where they have a name, ``shekel.*`` for the rest):

* ``gen_ai.client.token.usage`` (histogram, ``{token}``; ``gen_ai.token.type`` input/output) and
  ``gen_ai.client.operation.duration`` (histogram, seconds: from the call's reservation to its settlement),
  with ``gen_ai.operation.name``, ``gen_ai.provider.name`` and ``gen_ai.request.model``.
* ``shekel.cost`` (counter, USD; by model, provider and ``shekel.budget``, the innermost budget's path, so
  each call is counted once), ``shekel.budget.refusals`` (counter, by ``shekel.refusal.reason``), and per
  budget of the call's chain ``shekel.budget.spent``, ``shekel.budget.remaining``, ``shekel.budget.reserved``
  (gauges, USD) and ``shekel.budget.utilization`` (gauge, spent / limit).
* One ``CLIENT`` span per counted call, ``{operation} {model}`` (``chat meta-llama/...``), timed from the
  reservation to the settlement, with the usage, the cost (``gen_ai.usage.cost.amount`` and ``.currency``,
  ``shekel.cost_usd`` as an exact decimal string) and the budget. When the span current at settlement is
  another instrumentation's span for this very call (a GenAI span of the same operation and model that has
  no shekel cost yet), the attributes go on that span instead of a second one. A refused call gets a span
  with an error status, the refusal reason and the exception as an event.

Money stays a ``Decimal`` up to here: it becomes a float only in the values handed to OpenTelemetry. No
attribute carries a secret: model ids that are URLs lose their credentials, query and fragment (as in every
report of shekel's), and nothing of a request's headers is read.

A listener must not raise (``shekel._events`` swallows what it does): telemetry fails open, the cap does not
depend on it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from typing import Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        'shekel.integrations.opentelemetry needs opentelemetry-api: pip install "shekel[otel]"'
    ) from exc

from shekel import __version__
from shekel import _events as events
from shekel._budget import Budget
from shekel._redact import redact_model
from shekel.errors import BudgetExceededError
from shekel.ledger.shared import from_nano

__all__ = ["ShekelInstrumentor"]

# Attribute names (GenAI semantic conventions, then shekel's own).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # the name gen_ai.provider.name replaced: set on spans for older backends
REQUEST_MODEL = "gen_ai.request.model"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
COST_AMOUNT = "gen_ai.usage.cost.amount"
COST_CURRENCY = "gen_ai.usage.cost.currency"
ERROR_TYPE = "error.type"
BUDGET = "shekel.budget"
COST_USD = "shekel.cost_usd"
REASON = "shekel.refusal.reason"

#: The conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

#: Budgets (paths) the gauges report, the most recently charged ones: a process with a budget per tenant or
#: per request does not grow without bound.
MAX_GAUGED_BUDGETS = 1000

#: ``gen_ai.operation.name`` of a call record's ``source`` (anything else is a chat).
_OPERATIONS = {"huggingface_hub.text_generation": "text_completion"}
#: The status of a span of a call that failed, by its record's ``outcome``.
_FAILED = {
    "error": "the server answered with an error",
    "unknown": "no answer came back after the request was sent",
}
#: The operations a span of another instrumentation may have for it to be the span of a counted call.
_CALL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})


class _Telemetry:
    """The instruments of one ``instrument()``, and the listener that feeds them."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self.tracer = tracer
        self.meter = meter
        self.token_usage = _histogram(
            meter,
            "gen_ai.client.token.usage",
            "{token}",
            "Number of input and output tokens used.",
            TOKEN_BUCKETS,
        )
        self.duration = _histogram(
            meter, "gen_ai.client.operation.duration", "s", "GenAI operation duration.", DURATION_BUCKETS
        )
        # Cost is summed exactly here (Decimal, per attribute set) and observed at collection: the exported
        # total is the float of the exact sum, not a sum of floats.
        self.costs: dict[frozenset[tuple[str, str]], Decimal] = {}
        meter.create_observable_counter(
            "shekel.cost",
            [self.cost_observer()],
            unit="USD",
            description="What the calls a budget counted cost.",
        )
        self.refusals = meter.create_counter(
            "shekel.budget.refusals", unit="{call}", description="Calls a budget refused before sending them."
        )
        # The budget gauges are observed when the SDK collects, from the budgets themselves (their figures
        # now, calls in flight included): a call only notes which budgets it was held on or charged to.
        self.figures: dict[str, tuple[weakref.ref[Budget], tuple[Decimal, Decimal, Decimal | None]]] = {}
        self.figures_lock = threading.Lock()
        for name, unit, description, read in (
            ("shekel.budget.spent", "USD", "What a budget has spent (settled calls).", _spent),
            ("shekel.budget.remaining", "USD", "A budget's limit minus what it has spent.", _remaining),
            ("shekel.budget.reserved", "USD", "What calls in flight hold of a budget.", _reserved),
            ("shekel.budget.utilization", "1", "What a budget has spent over its limit.", _utilization),
        ):
            meter.create_observable_gauge(name, [self.observer(read)], unit=unit, description=description)

    def observer(self, read: _Read) -> Callable[[metrics.CallbackOptions], list[metrics.Observation]]:
        meter = self.meter

        def observe(options: metrics.CallbackOptions) -> list[metrics.Observation]:
            # The SDK keeps the first instruments of a name (instrumenting again with the same provider gets
            # them back, with this callback): read whichever instrumentation is on now, if it is on this meter.
            telemetry = ShekelInstrumentor._instance._telemetry if ShekelInstrumentor._instance else None
            if telemetry is None or telemetry.meter is not meter:
                return []
            with telemetry.figures_lock:
                figures = list(telemetry.figures.items())
            observed = []
            for path, (ref, last) in figures:
                budget = ref()
                value = read(*(last if budget is None else _figures_of(budget)))
                if value is not None:
                    observed.append(metrics.Observation(float(value), {BUDGET: path}))
            return observed

        return observe

    def cost_observer(self) -> Callable[[metrics.CallbackOptions], list[metrics.Observation]]:
        meter = self.meter

        def observe(options: metrics.CallbackOptions) -> list[metrics.Observation]:
            # As for the gauges: the instrumentation on now, if it is on this meter.
            telemetry = ShekelInstrumentor._instance._telemetry if ShekelInstrumentor._instance else None
            if telemetry is None or telemetry.meter is not meter:
                return []
            with telemetry.figures_lock:
                costs = list(telemetry.costs.items())
            return [metrics.Observation(float(total), dict(attributes)) for attributes, total in costs]

        return observe

    def __call__(self, event: object) -> None:
        if isinstance(event, events.Settled):
            self.settled(event)
        elif isinstance(event, events.Refused):
            self.refused(event)
        elif isinstance(event, events.Reserved):
            self.note(event.budgets)

    # ---------------------------------------------------------------- a charged call
    def settled(self, event: events.Settled) -> None:
        record = event.record
        model = redact_model(record.model)
        operation = _OPERATIONS.get(record.source, "chat")
        provider = record.provider or _provider_of(record.source)
        common: dict[str, str] = {OPERATION: operation}
        if provider is not None:
            common[PROVIDER] = provider
        if model is not None:
            common[REQUEST_MODEL] = model
        path = event.budgets[0].path
        answered = record.outcome == "ok"

        if answered:
            self.token_usage.record(record.input_tokens, {**common, TOKEN_TYPE: "input"})
            self.token_usage.record(record.output_tokens, {**common, TOKEN_TYPE: "output"})
        self.duration.record(event.duration, common if answered else {**common, ERROR_TYPE: "_OTHER"})
        key = frozenset({**common, BUDGET: path}.items())
        with self.figures_lock:
            self.costs[key] = self.costs.get(key, Decimal(0)) + record.cost
        self.note(event.budgets)

        attributes: dict[str, Any] = {
            **common,
            INPUT_TOKENS: record.input_tokens,
            OUTPUT_TOKENS: record.output_tokens,
            COST_AMOUNT: float(record.cost),
            COST_CURRENCY: "USD",
            COST_USD: str(record.cost),
            BUDGET: path,
            "shekel.outcome": record.outcome,
            "shekel.estimated": record.estimated,
            "shekel.priced": record.priced,
            "shekel.streamed": record.streamed,
        }
        if provider is not None:
            attributes[SYSTEM] = provider
        if record.fallback_from is not None:
            attributes["shekel.fallback_from"] = redact_model(record.fallback_from)
        status = None if answered else Status(StatusCode.ERROR, _FAILED[record.outcome])
        if not answered:
            attributes[ERROR_TYPE] = "_OTHER"

        theirs = _their_span(operation, model)
        if theirs is not None:
            present = _attributes_of(theirs)  # what the other instrumentation set is left as it is
            theirs.set_attributes({k: v for k, v in attributes.items() if k not in present})
            if status is not None:
                theirs.set_status(status)
            return
        end = time.time_ns()
        span = self.tracer.start_span(
            _span_name(operation, model),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=end - int(event.duration * 1e9),
        )
        if status is not None:
            span.set_status(status)
        span.end(end_time=end)

    def note(self, budgets: tuple[Budget, ...]) -> None:
        """The figures of the budgets a call was charged to, as this process sees them without asking a
        store: for a shared budget, the spend in its window as of this process's last hold, plus its own
        charges since."""
        with self.figures_lock:
            for budget in budgets:
                path = budget.path
                self.figures.pop(path, None)  # the most recent last: the oldest go first past the bound
                self.figures[path] = (weakref.ref(budget), _figures_of(budget))
            while len(self.figures) > MAX_GAUGED_BUDGETS:
                del self.figures[next(iter(self.figures))]

    # ---------------------------------------------------------------- a refused call
    def refused(self, event: events.Refused) -> None:
        error = event.error
        model = redact_model(event.model)
        reason = error.reason if isinstance(error, BudgetExceededError) else "price"
        path = event.budget.path
        operation = "chat"  # the call was not made: the conventions' default for an LLM call
        common: dict[str, str] = {OPERATION: operation}
        if model is not None:
            common[REQUEST_MODEL] = model
        self.refusals.add(1, {**common, BUDGET: path, REASON: reason})

        attributes: dict[str, Any] = {
            **common,
            BUDGET: path,
            REASON: reason,
            ERROR_TYPE: type(error).__name__,
        }
        if isinstance(error, BudgetExceededError):
            attributes["shekel.refusal.budget"] = error.budget_name
            attributes["shekel.refusal.needed_usd"] = error.needed
            if error.limit is not None:
                attributes["shekel.refusal.limit_usd"] = error.limit
                attributes["shekel.refusal.spent_usd"] = error.spent
        status = Status(StatusCode.ERROR, str(error))
        theirs = _their_span(operation, model)
        if theirs is not None:
            present = _attributes_of(theirs)
            theirs.set_attributes({k: v for k, v in attributes.items() if k not in present})
            theirs.set_status(status)
            return
        span = self.tracer.start_span(
            _span_name(operation, model), kind=SpanKind.CLIENT, attributes=attributes
        )
        span.set_status(status)
        span.record_exception(error)
        span.end()


def _figures_of(budget: Budget) -> tuple[Decimal, Decimal, Decimal | None]:
    """Spent, reserved and limit, as this process sees them without asking a store: for a shared budget,
    the spend in its window as the store last gave it, plus this process's charges since."""
    part = budget._shared
    account = budget._account
    spent = account.spent if part is None else from_nano(part.seen.spent)
    return spent, account.reserved, budget._cap_usd


_Read = Callable[[Decimal, Decimal, "Decimal | None"], "Decimal | None"]


def _spent(spent: Decimal, reserved: Decimal, limit: Decimal | None) -> Decimal | None:
    return spent


def _reserved(spent: Decimal, reserved: Decimal, limit: Decimal | None) -> Decimal | None:
    return reserved


def _remaining(spent: Decimal, reserved: Decimal, limit: Decimal | None) -> Decimal | None:
    return None if limit is None else max(limit - spent, Decimal(0))


def _utilization(spent: Decimal, reserved: Decimal, limit: Decimal | None) -> Decimal | None:
    return None if limit is None or limit <= 0 else spent / limit


def _histogram(
    meter: metrics.Meter, name: str, unit: str, description: str, buckets: tuple[float, ...]
) -> metrics.Histogram:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # an opentelemetry-api without bucket advice (1.27, 1.28): the SDK's default buckets
        return meter.create_histogram(name, unit=unit, description=description)


def _span_name(operation: str, model: str | None) -> str:
    return operation if model is None else f"{operation} {model}"


def _provider_of(source: str) -> str | None:
    return "huggingface" if source.startswith("huggingface_hub.") else None


def _attributes_of(span: trace.Span) -> Mapping[str, Any]:
    attributes = getattr(span, "attributes", None)  # the SDK's spans show theirs; the API's do not
    return attributes if isinstance(attributes, Mapping) else {}


def _their_span(operation: str, model: str | None) -> trace.Span | None:
    """The current span when it is another instrumentation's span for this call: a GenAI span of the same
    operation and model, recording, that no call has put a cost on yet. Otherwise None (shekel's own)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    attributes = _attributes_of(span)
    theirs = attributes.get(OPERATION)
    if theirs != operation and not (theirs in _CALL_OPERATIONS and operation in _CALL_OPERATIONS):
        return None
    asked = attributes.get(REQUEST_MODEL)
    if asked is not None and model is not None and asked != model:
        return None
    if COST_USD in attributes:
        return None  # a span around several calls: each gets its own
    return span


class ShekelInstrumentor:
    """Reports what budgets count to OpenTelemetry, as OpenTelemetry's instrumentors do.

    One instance per process (``ShekelInstrumentor()`` always returns it). ``instrument()`` starts listening
    to every budget of the process, ``uninstrument()`` stops; both are idempotent.
    """

    _instance: ShekelInstrumentor | None = None
    _telemetry: _Telemetry | None
    _lock = threading.Lock()

    def __new__(cls) -> ShekelInstrumentor:
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._telemetry = None
                cls._instance = instance
            return cls._instance

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        """Whether ``instrument()`` is in effect."""
        return self._telemetry is not None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The libraries this instrumentor needs (none: it reads shekel's own events)."""
        return ()

    def instrument(
        self,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        **kwargs: Any,
    ) -> None:
        """Report every call budgets count, with the providers given (the global ones by default).

        A second call while instrumented does nothing (call ``uninstrument()`` first to change providers).
        """
        with self._lock:
            if self._telemetry is not None:
                return
            telemetry = _Telemetry(
                trace.get_tracer(__name__, __version__, tracer_provider),
                metrics.get_meter(__name__, __version__, meter_provider),
            )
            events.subscribe(telemetry)
            self._telemetry = telemetry

    def uninstrument(self, **kwargs: Any) -> None:
        """Stop reporting (a no-op when not instrumented). Instruments already created stay with their
        providers; nothing more is recorded on them."""
        with self._lock:
            telemetry, self._telemetry = self._telemetry, None
            if telemetry is not None:
                events.unsubscribe(telemetry)
