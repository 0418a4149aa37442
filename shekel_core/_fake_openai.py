"""The OpenAI Responses and Embeddings APIs of the local test server (standard library only).

Shapes follow the real API as the installed ``openai`` SDK parses it: a Responses stream is named SSE events
(``event: response.output_text.delta``) with a ``sequence_number`` each, ending with ``response.completed``
(or ``response.incomplete`` when ``max_output_tokens`` cut the answer) which carries the full response and its
usage. Embeddings are floats, or little-endian float32 in base64 when ``encoding_format`` is ``"base64"``
(what the SDK asks for by default).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._fake_common import Answer, as_limit, next_id, text_of, words_of

if TYPE_CHECKING:
    from .testing import FakeInferenceServer

# ---------------------------------------------------------------- errors

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """An OpenAI error: ``{"error": {"message", "type", "param", "code"}}``."""
    kind, code = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    text = message or (
        "Rate limit reached for requests" if status == 429 else f"The server answered {status} (shekel fake)."
    )
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


# ---------------------------------------------------------------- responses


def response_input_tokens(body: Mapping[str, Any]) -> int:
    """Words + 3 per message: ``instructions`` is one message, a string ``input`` another, and each input
    item with a ``role`` one more; other items (tool outputs) count their words."""
    total = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += words_of(instructions) + 3
    items = body.get("input")
    if isinstance(items, str):
        return total + words_of(items) + 3
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if "role" in item:
            total += words_of(text_of(item.get("content"))) + 3
        else:
            total += sum(words_of(item.get(key)) for key in ("text", "output", "arguments"))
    return total


def _usage(server: FakeInferenceServer, prompt: int, words: int) -> dict[str, Any]:
    output = words + server.openai_reasoning_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": min(server.openai_cached_tokens, prompt),
            "cache_write_tokens": 0,
        },
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": server.openai_reasoning_tokens},
        "total_tokens": prompt + output,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response(
    server: FakeInferenceServer,
    body: Mapping[str, Any],
    response_id: str,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": response_id,
        "object": "response",
        "created_at": now,
        "status": status,
        "background": False,
        "completed_at": now if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": server.answer_model(body),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def responses_answer(server: FakeInferenceServer, body: Mapping[str, Any]) -> Answer:
    """``POST /v1/responses``: a JSON response, or its SSE event stream when ``stream`` is set."""
    words = server._words(body.get("max_output_tokens"))
    cut = len(words) < len(server.reply.split())
    prompt = response_input_tokens(body)
    usage = _usage(server, prompt, len(words))
    response_id, item_id = next_id("resp_"), next_id("msg_")
    text = " ".join(words)
    status = "incomplete" if cut else "completed"
    item = {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)],
    }
    output = int(usage["output_tokens"])
    if not body.get("stream"):
        final = _response(server, body, response_id, status=status, output=[item], usage=usage)
        return Answer.json(final, input_tokens=prompt, output_tokens=output)

    def events() -> Iterator[tuple[str | None, Mapping[str, Any]]]:
        started = _response(server, body, response_id, status="in_progress", output=[], usage=None)
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        steps: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": started}),
            ("response.in_progress", {"response": started}),
            (
                "response.output_item.added",
                {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
            ),
            ("response.content_part.added", {**where, "part": _text_part("")}),
        ]
        steps += [
            ("response.output_text.delta", {**where, "delta": word if i == 0 else " " + word, "logprobs": []})
            for i, word in enumerate(words)
        ]
        steps += [
            ("response.output_text.done", {**where, "text": text, "logprobs": []}),
            ("response.content_part.done", {**where, "part": _text_part(text)}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            (
                f"response.{status}",
                {"response": _response(server, body, response_id, status=status, output=[item], usage=usage)},
            ),
        ]
        for sequence, (name, data) in enumerate(steps):
            yield name, {"type": name, "sequence_number": sequence, **data}

    return Answer(
        events=events(),
        content_type="text/event-stream; charset=utf-8",
        input_tokens=prompt,
        output_tokens=output,
    )


# ---------------------------------------------------------------- embeddings


def embedding_of(item: object, dimensions: int) -> list[float]:
    """A deterministic unit-free vector in [-1, 1): the same input always gets the same numbers."""
    seed = repr(item).encode()
    raw = b""
    block = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        block += 1
    # Multiples of 1/128 are exact in float32, so the base64 and float encodings decode to equal lists.
    return [(b - 128) / 128 for b in raw[:dimensions]]


def embedding_inputs(value: object) -> list[object]:
    """The items of an embeddings ``input``: a string, a list of strings, a token array or a list of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    return list(value) if isinstance(value, list) else []


def embedding_tokens(item: object) -> int:
    return len(item) if isinstance(item, list) else words_of(item)


def embeddings_answer(server: FakeInferenceServer, body: Mapping[str, Any]) -> Answer:
    """``POST /v1/embeddings``: one vector per input, ``server.embedding_dim`` wide unless ``dimensions``."""
    items = embedding_inputs(body.get("input"))
    if not items:
        return Answer.json(error_body(400, "'input' : input cannot be an empty string or list"), status=400)
    width = as_limit(body.get("dimensions")) or server.embedding_dim
    b64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = embedding_of(item, width)
        value: object = base64.b64encode(struct.pack(f"<{width}f", *vector)).decode() if b64 else vector
        data.append({"object": "embedding", "index": index, "embedding": value})
    prompt = sum(embedding_tokens(item) for item in items)
    answer = {
        "object": "list",
        "data": data,
        "model": server.answer_model(body),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return Answer.json(answer, input_tokens=prompt, output_tokens=0)
