"""Counting ``openai`` SDK calls: chat completions, Responses and embeddings.

Patched: ``request`` of the SDK's ``SyncAPIClient`` and ``AsyncAPIClient`` (see ``_stainless``), for POSTs to
``/chat/completions`` (``create`` with or without ``stream=True``, ``parse``, the ``stream(...)`` helper,
``.with_raw_response``), ``/responses`` (``create``, ``parse``, ``stream(...)``; a stream's usage is in its
``response.completed`` event) and ``/embeddings`` (input tokens only). Every other request passes through.

Each call is reserved at its worst case before it is sent (the prompt estimate plus ``max_tokens``,
``max_completion_tokens`` or ``max_output_tokens``; with none given, the most the budget can pay for up to
shekel's ceiling, which is then sent), and settled at the usage the answer reports. A chat stream asks for
its usage (``stream_options={"include_usage": True}``) when the caller did not, and the usage-only chunk
this adds is hidden from the caller, as for Hugging Face.

Priced by where the client sends the call: OpenAI's own API (``api.openai.com``) at OpenAI's prices from the
bundled data; Hugging Face's router (``https://router.huggingface.co/v1``) as ``InferenceClient`` is there
(a ``:provider`` model suffix, the ``x-inference-provider`` answer header, else the highest known price);
any other address only at the prices the budget is given.

Count-once rule: a call made while another is counted (``call_in_progress``) is not counted again;
LangChain's and LlamaIndex's handlers leave the calls this adapter counts to it (``call_observer``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._budget import DEFAULT_MAX_TOKENS_CEILING, Budget, Reservation
from .._call import CallAccounting
from .._limits import whole_number
from .._redact import redact_model
from .._tokenizer import chat_prompt_estimates, counts_output
from .._usage import Usage, _field, _token_count, text_tokens_fair, text_tokens_high
from ._stainless import SdkInstaller, target_of
from .huggingface_hub import _ChatCall

#: Where an OpenAI-compatible server other than OpenAI's reads the output limit shekel sends.
_MAX_TOKENS = "max_tokens"


# ------------------------------------------------------------------------------------------ helpers
def _limit(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    return None if value is None else whole_number(value, key)


def _estimates(target: Budget, model: str | None, messages: list[Any], tools: object) -> tuple[int, int]:
    high, fair = chat_prompt_estimates(model, messages, tools)
    if target._chain_fallback:  # another model may be sent instead: its tokenizer may count more
        fallback = target._any_fallback()
        if fallback is not None and fallback != model:
            high = max(high, chat_prompt_estimates(fallback, messages, tools)[0])
    return high, fair


# ------------------------------------------------------------------------------------------ chat
class _OpenAIChatCall(_ChatCall):
    """A chat completion through the OpenAI SDK: the Hugging Face adapter's chat accounting (the answers have
    the same shape), sending the output limit under the name the server reads."""

    __slots__ = ("limit_key",)
    limit_key: str

    def start(self, reservation: Reservation, kwargs: dict[str, Any], observer: Any) -> None:
        super().start(reservation, kwargs, observer)
        if "max_tokens" in kwargs and self.limit_key != "max_tokens":
            kwargs[self.limit_key] = kwargs.pop("max_tokens")


def _plan_chat(target: Budget, client: Any, body: dict[str, Any]) -> _OpenAIChatCall:
    model, provider = target_of(client, body.get("model"))
    streamed = bool(body.get("stream"))
    n = _limit(body, "n") or 1
    limits = [v for v in (_limit(body, "max_tokens"), _limit(body, "max_completion_tokens")) if v is not None]
    limit = max(limits) if limits else None
    messages = body.get("messages") or []
    messages = messages if type(messages) is list else list(messages)
    high, fair = _estimates(target, model, messages, body.get("tools"))
    call = _OpenAIChatCall(
        (model, high, None if limit is None else limit * n, DEFAULT_MAX_TOKENS_CEILING * n, provider),
        prompt_fair=fair,
        source="openai.chat.completions",
        streamed=streamed,
    )
    call.n = n
    call.strip = streamed and body.get("stream_options") is None
    # OpenAI's own API reads max_completion_tokens (its reasoning models refuse max_tokens).
    call.limit_key = "max_completion_tokens" if provider == "openai" else _MAX_TOKENS
    if streamed and counts_output(model):
        call.pieces = []
    return call


# ------------------------------------------------------------------------------------------ responses
def _response_messages(body: Mapping[str, Any]) -> list[Any]:
    """The Responses ``instructions`` and ``input`` as chat messages, for the prompt estimate."""
    messages: list[Any] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    for item in items if isinstance(items, list) else ():
        if isinstance(item, Mapping) and "content" in item:
            messages.append({"role": "user", "content": _parts(item["content"])})
        else:  # a tool call, its output, a reasoning item: counted as the JSON it is sent as
            messages.append({"role": "user", "content": _json(item)})
    return messages


def _parts(content: object) -> object:
    if not isinstance(content, list):
        return content
    parts: list[Any] = []
    for part in content:
        if isinstance(part, Mapping) and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif isinstance(part, Mapping) and part.get("type") in ("input_image", "input_file"):
            parts.append({"image_url": True})
        else:
            parts.append({"text": _json(part)})
    return parts


def _json(value: object) -> str:
    try:
        return json.dumps(value, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def _responses_usage(usage: object) -> Usage | None:
    """Usage as the Responses API reports it (``input_tokens``, ``output_tokens``, cached input tokens)."""
    if usage is None:
        return None
    prompt = _token_count(_field(usage, "input_tokens"))
    output = _token_count(_field(usage, "output_tokens"))
    if prompt is None or output is None:
        return None
    cached = _token_count(_field(_field(usage, "input_tokens_details"), "cached_tokens")) or 0
    return Usage(prompt, output, cached_input_tokens=min(cached, prompt))


#: Stream events that end a Responses answer, carrying the whole response and its usage.
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class _ResponseCall(CallAccounting):
    """A Responses API call in flight."""

    __slots__ = ()

    def start(self, reservation: Reservation, changes: dict[str, Any], observer: Any) -> None:
        self.begin(reservation)
        if reservation.fallback_from is not None:
            changes["model"] = reservation.model
        if self.ask[2] is None and reservation.max_tokens is not None:
            changes["max_output_tokens"] = max(1, reservation.max_tokens)

    def _read(self, response: Any) -> None:
        self.saw_usage(_responses_usage(_field(response, "usage")))
        for item in _listed(_field(response, "output")):
            for part in _listed(_field(item, "content")):
                self.saw_output(_field(part, "text"))
            self.saw_output(_field(item, "arguments"))
        model = _field(response, "model")
        self.model_label = model if isinstance(model, str) and model else None

    def observe(self, event: Any) -> Any:
        kind = event.type
        if kind in _FINAL_EVENTS:
            self.answered = True
            self._read(event.response)
        elif kind.endswith(".delta"):
            delta = getattr(event, "delta", None)
            if isinstance(delta, str) and delta:
                self.output_chars += len(delta)
                self.output_chunks += 1
        return event


def _plan_response(target: Budget, client: Any, body: dict[str, Any]) -> _ResponseCall:
    model, provider = target_of(client, body.get("model"))
    limit = _limit(body, "max_output_tokens")
    high, fair = _estimates(target, model, _response_messages(body), body.get("tools"))
    return _ResponseCall(
        (model, high, limit, DEFAULT_MAX_TOKENS_CEILING, provider),
        prompt_fair=fair,
        source="openai.responses",
        streamed=bool(body.get("stream")),
    )


# ------------------------------------------------------------------------------------------ embeddings
class _EmbeddingCall(CallAccounting):
    """An embeddings call: input tokens only."""

    __slots__ = ()

    def start(self, reservation: Reservation, changes: dict[str, Any], observer: Any) -> None:
        self.begin(reservation)
        if reservation.fallback_from is not None:
            changes["model"] = reservation.model

    def settle(self, response: Any) -> Any:
        try:
            usage = _field(response, "usage")
            prompt = _token_count(_field(usage, "prompt_tokens")) if usage is not None else None
            if prompt is not None:
                self.saw_usage(Usage(prompt, 0))
            model = _field(response, "model")
            self.model_label = model if isinstance(model, str) and model else None
        except Exception:
            self.unreadable = True
        self.finish()
        return response

    def observe(self, chunk: Any) -> Any:  # embeddings do not stream
        return chunk


def _plan_embedding(target: Budget, client: Any, body: dict[str, Any]) -> _EmbeddingCall:
    model, provider = target_of(client, body.get("model"))
    value = body.get("input")
    items = [value] if isinstance(value, str) or _is_tokens(value) else list(value or ())
    high = fair = 0
    for item in items:
        if isinstance(item, str):
            high += text_tokens_high(item)
            fair += text_tokens_fair(item)
        elif isinstance(item, list) and _is_tokens(item):
            high += len(item)
            fair += len(item)
        else:
            text = _json(item)
            high += text_tokens_high(text)
            fair += text_tokens_fair(text)
    return _EmbeddingCall(
        (model, high, 0, 0, provider),
        prompt_fair=fair,
        source="openai.embeddings",
        streamed=False,
        model_label=None if model is None else redact_model(model),
    )


def _listed(value: object) -> list[Any] | tuple[Any, ...]:
    return value if isinstance(value, (list, tuple)) else ()


def _is_tokens(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


# ------------------------------------------------------------------------------------------ install
_ENDPOINTS = {
    "/chat/completions": _plan_chat,
    "/responses": _plan_response,
    "/embeddings": _plan_embedding,
}


def endpoints(path: str) -> Any:
    """The planner of a request path, or None for requests that cost nothing or are not counted."""
    return _ENDPOINTS.get(path)


_installer = SdkInstaller("openai", endpoints)


def available() -> bool:
    """Whether the openai SDK can be imported here."""
    return _installer.available()


def install() -> bool:
    """Patch the SDK. Idempotent; returns False (and does nothing) without openai."""
    return _installer.install()


def uninstall() -> None:
    """Put back the exact original methods, where our wrapper is still the one in place. Idempotent.

    The hooks put on SDK clients' HTTP clients stay there; without a counted call in flight they do nothing.
    """
    _installer.uninstall()


__all__ = ["available", "install", "uninstall"]
