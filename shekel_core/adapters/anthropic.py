"""Counting ``anthropic`` SDK calls: the Messages API.

Patched: ``request`` of the SDK's ``SyncAPIClient`` and ``AsyncAPIClient`` (see ``_stainless``), for POSTs to
``/v1/messages`` (``messages.create`` with or without ``stream=True``, the ``messages.stream(...)`` helper,
``.with_raw_response``, and the same under ``client.beta``). ``messages.count_tokens`` costs nothing and is
not counted; every other request passes through.

``max_tokens`` is required by the API, so each call is reserved at its prompt estimate plus that many output
tokens, and settled at the usage the answer reports: ``input_tokens`` (the prompt not read from or written
to the cache), ``cache_read_input_tokens`` and ``cache_creation_input_tokens``, each at its own price where
the price has one (``cached_input``, ``cache_write``), and ``output_tokens``. A stream reports its input in
``message_start`` and its output, cumulative, in ``message_delta``. Priced at Anthropic's prices from the
bundled data when the client calls ``api.anthropic.com``; any other address only at the prices the budget is
given.

Count-once rule: as for the OpenAI SDK (``adapters/openai.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._budget import DEFAULT_MAX_TOKENS_CEILING, Budget, Reservation
from .._call import CallAccounting
from .._limits import whole_number
from .._tokenizer import chat_prompt_estimates
from .._usage import Usage, _field, _token_count
from ._stainless import SdkInstaller, target_of


def read_usage(usage: object, previous: Usage | None = None) -> Usage | None:
    """Anthropic usage as shekel counts it: every prompt token in ``input_tokens``, of which those read from
    the cache (``cached_input_tokens``) and written to it (``cache_write_tokens``). Fields a stream's
    ``message_delta`` leaves out are taken from ``previous`` (its ``message_start``)."""
    if usage is None:
        return None
    output = _token_count(_field(usage, "output_tokens"))
    plain = _token_count(_field(usage, "input_tokens"))
    read = _token_count(_field(usage, "cache_read_input_tokens"))
    written = _token_count(_field(usage, "cache_creation_input_tokens"))
    if previous is not None and plain is None:  # a message_delta without the input side: message_start's
        return Usage(
            previous.input_tokens,
            output if output is not None else previous.output_tokens,
            cached_input_tokens=previous.cached_input_tokens,
            cache_write_tokens=previous.cache_write_tokens,
        )
    if plain is None or output is None:
        return None
    read, written = read or 0, written or 0
    return Usage(plain + read + written, output, cached_input_tokens=read, cache_write_tokens=written)


class _MessageCall(CallAccounting):
    """A Messages API call in flight: settles a message, or observes each stream event."""

    __slots__ = ()

    def start(self, reservation: Reservation, changes: dict[str, Any], observer: Any) -> None:
        self.begin(reservation)
        if reservation.fallback_from is not None:
            changes["model"] = reservation.model
        if self.ask[2] is None and reservation.max_tokens is not None:
            changes["max_tokens"] = max(1, reservation.max_tokens)

    def _read(self, message: Any) -> None:
        self.saw_usage(read_usage(_field(message, "usage")))
        content = _field(message, "content")
        for block in content if isinstance(content, (list, tuple)) else ():
            self._saw_block(block)
        model = _field(message, "model")
        self.model_label = model if isinstance(model, str) and model else None

    def _saw_block(self, block: Any) -> None:
        for key in ("text", "thinking", "partial_json"):
            self.saw_output(_field(block, key))
        tool_input = _field(block, "input")
        if tool_input:
            self.saw_output(json.dumps(tool_input, default=repr))

    def observe(self, event: Any) -> Any:
        kind = event.type
        if kind == "content_block_delta":
            self._saw_block(event.delta)
        elif kind == "message_start":
            message = event.message
            self.saw_usage(read_usage(message.usage))
            model = message.model
            self.model_label = model if isinstance(model, str) and model else None
        elif kind == "message_delta":
            self.saw_usage(read_usage(event.usage, self.reported_usage()))
            if getattr(event.delta, "stop_reason", None) is not None:
                self.answered = True
        return event


def _messages(body: Mapping[str, Any]) -> list[Any]:
    """The system prompt and the messages as chat messages of text parts, for the prompt estimate: images
    and documents count as images, other blocks (tool use and results) as the JSON they are sent as."""
    messages: list[Any] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _parts(system)})
    for message in body.get("messages") or ():
        content = _field(message, "content")
        messages.append({"role": "user", "content": _parts(content)})
    return messages


def _parts(content: object) -> object:
    if isinstance(content, str) or not isinstance(content, (list, tuple)):
        return content
    parts: list[Any] = []
    for block in content:
        kind = _field(block, "type")
        text = _field(block, "text")
        if kind == "text" and isinstance(text, str):
            parts.append({"text": text})
        elif kind in ("image", "document"):
            parts.append({"image_url": True})
        else:
            parts.append({"text": json.dumps(block, default=repr)})
    return parts


def _plan_message(target: Budget, client: Any, body: dict[str, Any]) -> _MessageCall:
    model, provider = target_of(client, body.get("model"))
    value = body.get("max_tokens")
    limit = None if value is None else whole_number(value, "max_tokens")
    messages = _messages(body)
    tools = body.get("tools")
    high, fair = chat_prompt_estimates(model, messages, tools)
    if target._chain_fallback:
        fallback = target._any_fallback()
        if fallback is not None and fallback != model:
            high = max(high, chat_prompt_estimates(fallback, messages, tools)[0])
    return _MessageCall(
        (model, high, limit, DEFAULT_MAX_TOKENS_CEILING, provider),
        prompt_fair=fair,
        source="anthropic.messages",
        streamed=bool(body.get("stream")),
    )


def endpoints(path: str) -> Any:
    """The planner of a request path (``/v1/messages``, with ``?beta=true`` under ``client.beta``)."""
    if path == "/v1/messages" or path.startswith("/v1/messages?"):
        return _plan_message
    return None


# ------------------------------------------------------------------------------------------ install
_installer = SdkInstaller("anthropic", endpoints)


def available() -> bool:
    """Whether the anthropic SDK can be imported here."""
    return _installer.available()


def install() -> bool:
    """Patch the SDK. Idempotent; returns False (and does nothing) without anthropic."""
    return _installer.install()


def uninstall() -> None:
    """Put back the exact original methods, where our wrapper is still the one in place. Idempotent.

    The hooks put on SDK clients' HTTP clients stay there; without a counted call in flight they do nothing.
    """
    _installer.uninstall()


__all__ = ["available", "install", "read_usage", "uninstall"]
