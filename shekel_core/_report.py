"""Rendering a budget snapshot (``Budget.to_dict()``) as a readable text table."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def _usd(text: str | None) -> str:
    if text is None:
        return "no limit"
    return f"${Decimal(text):.6f}"


def render_summary(snapshot: dict[str, Any], indent: str = "") -> str:
    lines = [_headline(snapshot, indent)]
    models = snapshot["models"]
    if models:
        width = max(24, *(len(m) for m in models))
        lines.append(
            f"{indent}  {'model':<{width}}  {'calls':>6}  {'input':>9}  {'output':>9}  {'cost':>12}  notes"
        )
        for model, t in sorted(models.items()):
            notes = []
            if t["estimated_calls"]:
                notes.append(f"{t['estimated_calls']} estimated")
            if t["unpriced_calls"]:
                notes.append(f"{t['unpriced_calls']} UNPRICED")
            lines.append(
                f"{indent}  {model:<{width}}  {t['calls']:>6}  {t['input_tokens']:>9}  {t['output_tokens']:>9}"
                f"  {_usd(t['cost_usd']):>12}  {', '.join(notes)}"
            )
    if snapshot["unpriced_calls"]:
        lines.append(
            f"{indent}  ! {snapshot['unpriced_calls']} unpriced call(s) "
            f"({snapshot['unpriced_input_tokens']} input / {snapshot['unpriced_output_tokens']} output tokens) "
            "cost $0 here: max_usd cannot stop them. Give price_per_1k_tokens or budget(pricing='prices.toml')."
        )
    if snapshot["children"]:
        lines.append(f"{indent}  children:")
        for child in snapshot["children"]:
            lines.append(render_summary(child, indent + "    "))
    return "\n".join(lines)


def _headline(snapshot: dict[str, Any], indent: str) -> str:
    limit = snapshot["limit_usd"]
    share = ""
    if limit is not None:
        share = f" ({Decimal(snapshot['spent_usd']) / Decimal(limit):.1%})"
    calls = f"{snapshot['calls']}"
    if snapshot["max_llm_calls"] is not None:
        calls += f" of {snapshot['max_llm_calls']}"
    return (
        f"{indent}budget {snapshot['name']!r}: spent {_usd(snapshot['spent_usd'])} of {_usd(limit)}{share}, "
        f"calls {calls}, tokens {snapshot['input_tokens']} in / {snapshot['output_tokens']} out"
    )
