"""Tables and the live line without rich (``shekel[cli]`` not installed): plain aligned text."""

from __future__ import annotations

import io
import sys

import pytest

from shekel.cli import _live, _render


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_plain_table_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    out = io.StringIO()
    _render.table(
        ["model", "calls", "spent"],
        [["m", 12, "$0.016800"], ["other/model", 3, "$1.000000"]],
        title="t",
        stream=out,
    )
    assert out.getvalue().splitlines() == [
        "t",
        "model        calls      spent",
        "-----------  -----  ---------",
        "m               12  $0.016800",
        "other/model      3  $1.000000",
    ]


def test_the_live_line_is_cleared_before_the_programs_output_and_drawn_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    with _live.live_line(lambda: "STATUS", screen):
        print("partial", end="")  # no redraw on an unfinished line
        print(" done")
    assert screen.getvalue() == (
        "\r\x1b[2KSTATUS" + "\r\x1b[2K" + "partial" + " done\n" + "\r\x1b[2KSTATUS" + "\r\x1b[2K"
    )


def test_bar() -> None:
    assert _live.bar(0.5) == "[##########----------] 50%"
    assert _live.bar(None) == "" and _live.bar(3.0).startswith("[" + "#" * 20 + "]")
