"""The live status line of ``shekel run`` on a terminal: spent / limit as a bar, calls, last model.

It is drawn on stderr, and the program's own writes to ``sys.stdout`` and ``sys.stderr`` go through a
proxy that clears it first and draws it again after each complete line, so the two never share a line, and
each write still goes to its own stream (rich's ``Live`` would send the program's stdout to its console,
stderr here, which breaks ``shekel run job.py > out.txt``).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

BAR = 20


def bar(share: float | None) -> str:
    if share is None:
        return ""
    filled = min(BAR, max(0, round(share * BAR)))
    return "[" + "#" * filled + "-" * (BAR - filled) + f"] {share:.0%}"


class _Proxy:
    """A text stream that clears the status line before the program writes and redraws it after."""

    def __init__(self, stream: IO[str], live: PlainLive) -> None:
        self._stream = stream
        self._live = live

    def write(self, text: str) -> int:
        if os.getpid() != self._live.pid:  # a forked child writes straight through: the line is the parent's
            return self._stream.write(text)
        with self._live.lock:
            self._live.clear()
            written = self._stream.write(text)
            self._stream.flush()
            self._live.partial = not text.endswith("\n") if text else self._live.partial
            self._live.draw()
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class PlainLive:
    def __init__(self, render: Callable[[], str], stream: IO[str]) -> None:
        self.render = render
        self.stream = stream
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.partial = False
        self.shown = False
        self._saved: tuple[Any, Any] | None = None

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self.shown = False

    def draw(self) -> None:
        if self.partial:
            return
        self.stream.write("\r\x1b[2K" + self.render()[: _columns() - 1])
        self.stream.flush()
        self.shown = True

    def refresh(self) -> None:
        with self.lock:
            self.draw()

    def __enter__(self) -> PlainLive:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Proxy(sys.stdout, self)
        sys.stderr = _Proxy(sys.stderr, self)
        self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.clear()
            if self._saved is not None:
                sys.stdout, sys.stderr = self._saved


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def live_line(render: Callable[[], str], stream: IO[str]) -> PlainLive:
    return PlainLive(render, stream)
