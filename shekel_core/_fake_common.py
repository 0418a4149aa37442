"""What every protocol of the local test server shares: one answer type, word counts, ids (standard library only)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Ids the server hands out (``resp_1``, ``msg_2``...): unique within the process, stable across runs.
_counter = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}{next(_counter):024x}"


def words_of(text: object) -> int:
    """One token per whitespace-separated word."""
    return len(text.split()) if isinstance(text, str) else 0


def text_of(content: object) -> str:
    """The text of a message's content: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def prompt_tokens_of(messages: Any) -> int:
    """The server's prompt count for chat messages: words + 3 per message."""
    total = 0
    for message in messages or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += len(str(content or "").split()) + 3
    return total


def as_limit(limit: object) -> int | None:
    """Read a token limit the way a lenient (pydantic) server does: 10, 10.0 and "10" all mean 10."""
    if (isinstance(limit, float) and limit.is_integer()) or (
        isinstance(limit, str) and limit.strip().isascii() and limit.strip().isdigit()
    ):
        limit = int(limit)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


@dataclass
class Answer:
    """What the server sends for one request, and the tokens it reports (its bill).

    Exactly one of ``body`` (a whole answer) and ``events`` (an SSE stream: ``(event name or None, data)``
    pairs) is set.
    """

    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    events: Iterator[tuple[str | None, Mapping[str, Any] | str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None

    @classmethod
    def json(cls, payload: Any, status: int = 200, **kwargs: Any) -> Answer:
        return cls(status=status, body=json.dumps(payload).encode(), **kwargs)
