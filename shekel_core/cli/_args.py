"""Parsing command-line values: each bad value is a one-line message (exit code 2), never a traceback."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..errors import CALLS_ADVICE, TOKENS_ADVICE, USD_ADVICE
from ..ledger.shared import OPEN_ADVICE, WINDOW_ADVICE


class UsageError(Exception):
    """A bad argument: the message says what is wrong and how to write it."""


#: Advice of the library's errors, as the ``shekel`` command's options say it (None: left out).
_COMMAND_ADVICE = (
    (OPEN_ADVICE, ""),
    (USD_ADVICE, "Raise --budget, or set --fallback-model M --fallback-at F."),
    (CALLS_ADVICE, "Raise --max-calls."),
    (TOKENS_ADVICE, "Raise --max-tokens."),
    (
        WINDOW_ADVICE,
        "Use the same --window, another --name, or reset the budget (shekel reset --store URL NAME --yes "
        "forgets its spend and its window).",
    ),
)


def for_command(error: BaseException | str) -> str:
    """An error's message with the advice a ``budget()`` caller follows given as the command's options."""
    text = str(error)
    for advice, instead in _COMMAND_ADVICE:
        text = text.replace(advice, instead)
    return text


def money(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise UsageError(f"{what} must be a number of US dollars, e.g. {what} 0.50, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise UsageError(f"{what} must be a number of US dollars >= 0, e.g. {what} 0.50, got {text!r}")
    return value


def count(text: str, what: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise UsageError(f"{what} must be a whole number >= 0, e.g. {what} 100, got {text!r}")
    return int(text)


def fraction(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise UsageError(
            f"{what} must be a fraction of the budget between 0 and 1, e.g. {what} 0.8, got {text!r}"
        )
    return value


def price_pair(text: str) -> dict[str, str]:
    parts = text.split(",")
    if len(parts) != 2:
        raise UsageError(
            f"--price-per-1k takes the input and output prices in USD per 1,000 tokens, as IN,OUT "
            f"(e.g. --price-per-1k 0.5,1.5), got {text!r}"
        )
    return {
        "input": str(money(parts[0], "--price-per-1k (input)")),
        "output": str(money(parts[1], "--price-per-1k (output)")),
    }


_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since(text: str, now: float | None = None) -> float:
    """``7d``, ``24h``, ``90m``, or a date or time in ISO form (UTC unless it says), as epoch seconds."""
    now = time.time() if now is None else now
    match = _SINCE.match(text)
    if match:
        return _since_checked(now - float(match.group(1)) * _UNITS[match.group(2)], text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since takes a duration (30m, 24h, 7d, 2w) or a date (2025-01-31, 2025-01-31T12:00), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return _since_checked(moment.timestamp(), text)


def _since_checked(start: float, text: str) -> float:
    if not start >= 0:  # before 1970 (or not a number): no call was logged then, and no date can show it
        raise UsageError(
            f"--since {text.strip()} reaches back before 1970: give a shorter duration (e.g. 52w) or a date "
            f"(e.g. 2025-01-31)"
        )
    return start


def writable_file(option: str, given: str) -> Path:
    """``given`` as an absolute path, refused now (one line) if it cannot be written."""
    path = Path(given).expanduser().resolve()
    if path.is_dir():
        raise UsageError(f"{option} {given}: is a directory, give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {given}: cannot be written, no such directory {str(path.parent)!r}")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise UsageError(f"{option} {given}: cannot be written, permission denied")
    return path
