"""Rendering a budget snapshot (``Budget.to_dict()``) as a readable text table."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

#: Child budgets are indented up to this depth; deeper ones are listed flat, with their level, so a deep
#: tree does not make the text grow with the square of its depth.
MAX_INDENT_DEPTH = 6


def _usd(text: str | None) -> str:
    if text is None:
        return "no limit"
    return f"${Decimal(text):.6f}"


def render_summary(snapshot: dict[str, Any]) -> str:
    lines: list[str] = []
    stack: list[tuple[dict[str, Any], int]] = [(snapshot, 0)]
    while stack:  # depth first, without recursion: trees may be deep
        node, depth = stack.pop()
        indent = "    " * min(depth, MAX_INDENT_DEPTH)
        lines.extend(_budget_lines(node, indent, depth=depth))
        children = node["children"]
        if children:
            lines.append(f"{indent}  children:")
            stack.extend((child, depth + 1) for child in reversed(children))
    return "\n".join(lines)


def _budget_lines(snapshot: dict[str, Any], indent: str, *, depth: int) -> list[str]:
    lines = [_headline(snapshot, indent, depth)]
    models = snapshot["models"]
    if models:
        width = max(24, *(len(m) for m in models))
        lines.append(
            f"{indent}  {'model':<{width}}  {'provider':<14}  {'calls':>6}  {'input':>9}  {'output':>9}  "
            f"{'cost':>12}  notes"
        )
        for model, t in sorted(models.items()):
            notes = []
            if t["failed_calls"]:
                notes.append(f"{t['failed_calls']} failed")
            if t["estimated_calls"]:
                notes.append(f"{t['estimated_calls']} estimated")
            if t["unpriced_calls"]:
                notes.append(f"{t['unpriced_calls']} UNPRICED")
            providers = ", ".join(t["providers"]) or "-"
            lines.append(
                f"{indent}  {model:<{width}}  {providers:<14}  {t['calls']:>6}  {t['input_tokens']:>9}  "
                f"{t['output_tokens']:>9}  {_usd(t['cost_usd']):>12}  {', '.join(notes)}"
            )
    if snapshot["unpriced_calls"]:
        lines.append(
            f"{indent}  ! {snapshot['unpriced_calls']} unpriced call(s) "
            f"({snapshot['unpriced_input_tokens']} input / {snapshot['unpriced_output_tokens']} output tokens) "
            "cost $0 here: max_usd cannot stop them. Give price_per_1k_tokens or budget(pricing='prices.toml')."
        )
    return lines


def _headline(snapshot: dict[str, Any], indent: str, depth: int) -> str:
    limit = snapshot["limit_usd"]
    share = ""
    if limit is not None:
        share = f" ({Decimal(snapshot['spent_usd']) / Decimal(limit):.1%})"
    calls = f"{snapshot['calls']}"
    if snapshot["max_llm_calls"] is not None:
        calls += f" of {snapshot['max_llm_calls']}"
    if snapshot["failed_calls"]:
        calls += f" (+{snapshot['failed_calls']} failed)"
    if snapshot["calls_in_flight"]:
        calls += f", {snapshot['calls_in_flight']} in flight holding {_usd(snapshot['reserved_usd'])}"
    level = f" (level {depth})" if depth > MAX_INDENT_DEPTH else ""
    return (
        f"{indent}budget {snapshot['name']!r}{level}: spent {_usd(snapshot['spent_usd'])} of {_usd(limit)}{share}, "
        f"calls {calls}, tokens {snapshot['input_tokens']} in / {snapshot['output_tokens']} out"
    )
