"""What a budget reports: one record per call, aggregates per model, and the JSON-ready snapshot."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

from ._money import ZERO


@dataclass(slots=True)
class ModelTotals:
    """Aggregates of every call made with one model (in this budget and its children).

    ``calls`` are calls answered; ``failed_calls`` requests sent that failed (an error answer, or an
    outcome unknown after the request left, charged what it held).
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = ZERO
    estimated_calls: int = 0
    unpriced_calls: int = 0
    failed_calls: int = 0
    #: The Inference Providers that served these calls (names, as the records give them).
    providers: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One settled call, as recorded by the budget that was innermost when it was made."""

    model: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    estimated: bool
    priced: bool
    streamed: bool
    source: str
    fallback_from: str | None = None
    at: float = field(default_factory=time.time)
    #: The Inference Provider the call was priced for (the one that served it, when known).
    provider: str | None = None
    #: Where the price came from (a budget, a pricing file, the bundled data).
    price_source: str | None = None
    #: Price parts shekel could not charge exactly (cached input without a cached price, say).
    notes: tuple[str, ...] = ()
    #: ``"ok"`` (answered), ``"error"`` (an error answer: costs nothing) or ``"unknown"`` (the request left
    #: and no answer came back: a timeout, a dropped connection, a cancellation; charged what it held).
    outcome: str = "ok"


#: A ``CallRecord``'s fields, in order, as a budget keeps them: building the frozen record (an
#: ``object.__setattr__`` per field) is left to whoever reads ``records``, not done on every call.
RecordFields = tuple[
    str | None,
    int,
    int,
    Decimal,
    bool,
    bool,
    bool,
    str,
    str | None,
    float,
    str | None,
    str | None,
    tuple[str, ...],
    str,
]


def record_dict(r: CallRecord) -> dict[str, object]:
    return {
        "model": r.model,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "cost_usd": str(r.cost),
        "estimated": r.estimated,
        "priced": r.priced,
        "streamed": r.streamed,
        "source": r.source,
        "fallback_from": r.fallback_from,
        "at": r.at,
        "provider": r.provider,
        "price_source": r.price_source,
        "notes": list(r.notes),
        "outcome": r.outcome,
    }


def totals_dict(t: ModelTotals) -> dict[str, object]:
    return {
        "calls": t.calls,
        "failed_calls": t.failed_calls,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cost_usd": str(t.cost),
        "estimated_calls": t.estimated_calls,
        "unpriced_calls": t.unpriced_calls,
        "providers": sorted(t.providers),
    }
