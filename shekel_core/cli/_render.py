"""Tables and lines for people: rich's when it is installed (``shekel[cli]``), plain aligned text otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import IO, Any


def usd(amount: Decimal | None) -> str:
    return "no limit" if amount is None else f"${amount:.6f}"


def _rich_console(stream: IO[str]) -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream, highlight=False, soft_wrap=False, width=max(100, _width(stream)))


def _width(stream: IO[str]) -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns if stream.isatty() else 160


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    title: str | None = None,
    stream: IO[str] | None = None,
    numeric_from: int = 1,
    numeric_to: int | None = None,
) -> None:
    """Print ``rows`` under ``headers``, after ``title``; columns ``numeric_from`` to ``numeric_to`` (the
    last, by default) are right-aligned."""
    out = stream if stream is not None else sys.stdout
    last = len(headers) - 1 if numeric_to is None else numeric_to

    def right(i: int) -> bool:
        return numeric_from <= i <= last

    console = _rich_console(out)
    if console is not None:
        from rich.table import Table

        if title:
            console.print(title, soft_wrap=True, markup=False)
        grid = Table(show_edge=False, header_style="bold")
        for i, header in enumerate(headers):
            grid.add_column(header, justify="right" if right(i) else "left")
        for row in rows:
            grid.add_row(*(str(cell) for cell in row))
        console.print(grid)
        return
    text = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    if title:
        out.write(f"{title}\n")
    for n, row in enumerate(text):
        cells = [
            c.rjust(w) if right(i) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    out.flush()


def line(text: str, *, stream: IO[str] | None = None, style: str | None = None) -> None:
    """One line, coloured with ``style`` when rich is installed and the stream is a terminal."""
    out = stream if stream is not None else sys.stderr
    console = _rich_console(out) if style else None
    if console is not None:
        from rich.text import Text

        console.print(Text(text, style=style or ""), soft_wrap=True)
        return
    out.write(text + "\n")
    out.flush()
