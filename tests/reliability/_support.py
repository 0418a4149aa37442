"""Shared helpers of the reliability suite: recorded responses, outcomes and ledger checks."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from shekel import Budget
from shekel._budget import MAX_RECORDS

RECORDED = Path(__file__).resolve().parent.parent / "data" / "recorded"


def recording(name: str) -> dict[str, Any]:
    """A recorded real response (copied from the shared recordings; its ``source`` field says where from)."""
    data: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())
    assert data["source"], "every recording keeps the public source it was taken from"
    return data


def plain(value: Any) -> Any:
    """A comparable form of what a call returned: dataclasses as dicts, without the server clock."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        data.pop("created", None)
        data["__type__"] = type(value).__name__
        return data
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "created"}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def error_form(exc: BaseException) -> tuple[Any, ...]:
    """What a caller can observe of an exception: its type, message, HTTP status and body."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    body = None
    if response is not None:
        try:
            body = response.text
        except Exception:  # a streamed response that was never read
            body = "<unread>"
    return (type(exc), str(exc), status, body)


def walk(budget: Budget) -> list[Budget]:
    """The budget and all its descendants."""
    out = [budget]
    for child in budget.children:
        out.extend(walk(child))
    return out


def assert_ledger_consistent(root: Budget) -> None:
    """The invariants that must hold once every call in the tree has finished."""
    for b in walk(root):
        account = b._account
        assert account.reserved == 0, f"{b.path}: {account.reserved} still reserved"
        assert account.inflight == 0, f"{b.path}: {account.inflight} calls still in flight"
        assert account.spent >= 0 and b._own_spent >= 0
        assert b.calls >= 0 and b.input_tokens >= 0 and b.output_tokens >= 0
        if account.limit is not None:
            assert account.spent <= account.limit, f"{b.path}: spent {account.spent} over {account.limit}"
        children = b.children
        assert account.spent == b._own_spent + sum((c.spent_exact for c in children), Decimal(0))
        records = b.records
        if len(records) < MAX_RECORDS:  # older records are folded into the aggregates only
            attempts = b.calls + b.failed_calls
            assert attempts == len(records) + sum(c.calls + c.failed_calls for c in children)
            assert b._own_spent == sum((r.cost for r in records), Decimal(0))
        for record in records:
            assert record.cost >= 0 and record.input_tokens >= 0 and record.output_tokens >= 0
