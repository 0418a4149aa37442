"""The Anthropic Messages API of the local test server (standard library only).

As the real API: ``max_tokens`` is required; ``usage.input_tokens`` excludes the prompt tokens read from or
written to the cache (``cache_read_input_tokens``, ``cache_creation_input_tokens``); a stream is named SSE
events, ``message_start`` (the message with the input usage and ``output_tokens: 1``), ``content_block_start``,
``ping``, one ``content_block_delta`` per word, ``content_block_stop``, ``message_delta`` (``stop_reason`` and
the cumulative ``output_tokens``), ``message_stop``. Errors are ``{"type": "error", "error": {...}}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._fake_common import Answer, as_limit, next_id, prompt_tokens_of, text_of, words_of

if TYPE_CHECKING:
    from .testing import FakeInferenceServer

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """An Anthropic error: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    text = message or (
        "Overloaded" if kind == "overloaded_error" else f"The server answered {status} (shekel fake)."
    )
    return {"type": "error", "error": {"type": kind, "message": text}, "request_id": next_id("req_")}


def input_tokens_of(body: Mapping[str, Any]) -> int:
    """Words + 3 per message, the ``system`` prompt counting as one message."""
    system = text_of(body.get("system"))
    return prompt_tokens_of(body.get("messages")) + (words_of(system) + 3 if system else 0)


def count_tokens_answer(body: Mapping[str, Any]) -> Answer:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``, cache or not."""
    tokens = input_tokens_of(body)
    return Answer.json({"input_tokens": tokens}, input_tokens=tokens, output_tokens=0)


def messages_answer(server: FakeInferenceServer, body: Mapping[str, Any]) -> Answer:
    """``POST /v1/messages``: the message, or its event stream when ``stream`` is set."""
    limit = as_limit(body.get("max_tokens"))
    if limit is None or limit < 1:
        problem = "max_tokens: Field required" if limit is None else "max_tokens: must be at least 1"
        return Answer.json(error_body(400, problem), status=400)
    words = server._words(limit)
    stop = "max_tokens" if len(words) < len(server.reply.split()) else "end_turn"
    prompt = input_tokens_of(body)
    read, write = max(server.anthropic_cache_read, 0), max(server.anthropic_cache_write, 0)
    usage: dict[str, Any] = {
        "input_tokens": max(prompt - read - write, 0),
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": len(words),
        "service_tier": "standard",
    }
    message: dict[str, Any] = {
        "id": next_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": server.answer_model(body),
        "content": [{"type": "text", "text": " ".join(words)}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    headers = {"request-id": next_id("req_")}
    billed_in, billed_out = usage["input_tokens"], len(words)
    if not body.get("stream"):
        return Answer.json(message, headers=headers, input_tokens=billed_in, output_tokens=billed_out)

    def events() -> Iterator[tuple[str | None, Mapping[str, Any]]]:
        start: dict[str, Any] = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**usage, "output_tokens": 1},
        }
        yield "message_start", {"type": "message_start", "message": start}
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        yield "ping", {"type": "ping"}
        for i, word in enumerate(words):
            delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
            yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    return Answer(
        events=events(),
        content_type="text/event-stream; charset=utf-8",
        headers=headers,
        input_tokens=billed_in,
        output_tokens=billed_out,
    )
