"""Token counts: reading usage from responses through one typed accessor, and estimating it when absent."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Token counts above this are treated as malformed rather than trusted.
_MAX_SANE_TOKENS = 10_000_000

# Upper-bound prompt estimate: ordinary (ASCII) text runs 3.5-4.5 bytes per token, so one token per two bytes
# errs high by about 2x. Other scripts and emoji are counted at one token per UTF-8 byte, the most a
# byte-level tokenizer can spend on them (about 2-3x for CJK). Chat templates add a few tokens per message
# plus a preamble.
_BYTES_PER_TOKEN_HIGH = 2
_BYTES_PER_TOKEN_FAIR = 4
_OTHER_BYTES_PER_TOKEN_FAIR = 3
_PER_MESSAGE_OVERHEAD = 8
_TEMPLATE_OVERHEAD = 32
# An image part in a message: providers bill from a few hundred to a few thousand tokens.
_IMAGE_TOKENS_HIGH = 3000
_IMAGE_TOKENS_FAIR = 1000


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call used. ``estimated`` is true when shekel had to estimate any part of it."""

    input_tokens: int
    output_tokens: int
    estimated: bool = False
    #: Prompt tokens the provider served from its cache (part of ``input_tokens``), when it says so.
    cached_input_tokens: int = 0
    #: Prompt tokens the provider wrote to its cache (part of ``input_tokens``; Anthropic bills them apart).
    cache_write_tokens: int = 0


def _field(obj: object, name: str) -> object:
    if isinstance(obj, dict):  # dicts and huggingface_hub's types (dict subclasses), without the ABC check
        return obj.get(name)
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _token_count(value: object) -> int | None:
    """A count as servers should send it: a non-negative whole number of sane size; anything else is None."""
    if type(value) is int:  # the usual case, without the isinstance calls (bool is a subclass, not int)
        return value if 0 <= value <= _MAX_SANE_TOKENS else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _MAX_SANE_TOKENS:
        return value
    return None


def read_usage(container: object) -> Usage | None:
    """Usage reported in a response or stream chunk (its ``usage`` field), or None when absent or malformed."""
    usage = container.get("usage") if isinstance(container, dict) else _field(container, "usage")
    if usage is None:
        return None
    if type(usage) is dict:  # as huggingface_hub's types hold it: the fields read without function calls
        prompt = usage["prompt_tokens"] if "prompt_tokens" in usage else None  # noqa: SIM401
        completion = usage["completion_tokens"] if "completion_tokens" in usage else None  # noqa: SIM401
        # Counts of the usual kind are taken as they are; anything else goes through _token_count.
        if not (type(prompt) is int and 0 <= prompt <= _MAX_SANE_TOKENS):
            prompt = _token_count(prompt)
        if not (type(completion) is int and 0 <= completion <= _MAX_SANE_TOKENS):
            completion = _token_count(completion)
    else:
        prompt = _token_count(_field(usage, "prompt_tokens"))
        completion = _token_count(_field(usage, "completion_tokens"))
    if prompt is None or completion is None:
        return None
    # ``usage.prompt_tokens_details``: huggingface_hub keeps such extra keys only on its typed attribute.
    if type(usage) is dict:
        details = usage["prompt_tokens_details"] if "prompt_tokens_details" in usage else None  # noqa: SIM401
    else:
        details = _field(usage, "prompt_tokens_details")
    if details is None and type(container) is not dict:
        try:  # getattr(container, "usage", None) without the function call
            typed = container.usage  # type: ignore[attr-defined]
        except AttributeError:
            typed = None
        details = getattr(typed, "prompt_tokens_details", None)
    cached = None if details is None else _token_count(_field(details, "cached_tokens"))
    return Usage(prompt, completion, cached_input_tokens=min(cached, prompt) if cached else 0)


def prompt_tokens_estimates(messages: Iterable[object], tools: object = None) -> tuple[int, int]:
    """``(prompt_tokens_high, prompt_tokens_fair)`` of a chat prompt, reading the messages only once.

    Messages are dicts or huggingface_hub dataclasses; text is counted in UTF-8 bytes, images by number.
    """
    text_bytes = other_bytes = count = images = 0  # ASCII bytes, non-ASCII bytes
    for message in messages:
        count += 1
        tool_calls: object = None
        if type(message) is dict:  # the usual case: read it directly, without function calls
            content = message["content"] if "content" in message else None  # noqa: SIM401
            tool_calls = message["tool_calls"] if "tool_calls" in message else None  # noqa: SIM401
        else:
            content = _field(message, "content")
        if type(content) is str or isinstance(content, str):
            if content.isascii():
                text_bytes += len(content)
            else:
                ascii_part, other_part = _byte_sizes(content)
                text_bytes += ascii_part
                other_bytes += other_part
        elif isinstance(content, Iterable):
            for part in content:
                text = _field(part, "text")
                if isinstance(text, str):
                    ascii_part, other_part = _byte_sizes(text)
                    text_bytes += ascii_part
                    other_bytes += other_part
                elif _field(part, "image_url") is not None:
                    images += 1
        if type(message) is not dict:
            tool_calls = _field(message, "tool_calls")
        if tool_calls:
            text_bytes += len(_dump(tool_calls))
    if tools:
        text_bytes += len(_dump(tools))
    # Whole-number ceiling division: math.ceil(text_bytes / n), exact at any size.
    high = (
        -(-text_bytes // _BYTES_PER_TOKEN_HIGH)
        + other_bytes
        + count * _PER_MESSAGE_OVERHEAD
        + _TEMPLATE_OVERHEAD
        + images * _IMAGE_TOKENS_HIGH
    )
    fair = (
        -(-text_bytes // _BYTES_PER_TOKEN_FAIR)
        + -(-other_bytes // _OTHER_BYTES_PER_TOKEN_FAIR)
        + count * 4
        + images * _IMAGE_TOKENS_FAIR
    )
    return high, fair


def _byte_sizes(text: str) -> tuple[int, int]:
    """(ASCII bytes, non-ASCII bytes) of ``text`` in UTF-8."""
    if text.isascii():
        return len(text), 0
    ascii_bytes = len(text.encode("ascii", "ignore"))
    return ascii_bytes, len(text.encode()) - ascii_bytes


def prompt_tokens_high(messages: Iterable[object], tools: object = None) -> int:
    """An estimate of a chat prompt's tokens that errs high (about 2x for ordinary text), for reservations."""
    return prompt_tokens_estimates(messages, tools)[0]


def prompt_tokens_fair(messages: Iterable[object], tools: object = None) -> int:
    """A best guess of a chat prompt's tokens, used to charge a call whose usage the server did not report."""
    return prompt_tokens_estimates(messages, tools)[1]


def _dump(value: object) -> bytes:
    try:
        return json.dumps(value, default=repr).encode()
    except (TypeError, ValueError):
        return repr(value).encode()


def text_tokens_high(text: str) -> int:
    """Upper-bound estimate for a plain text prompt (text generation)."""
    ascii_bytes, other_bytes = _byte_sizes(text)
    return -(-ascii_bytes // _BYTES_PER_TOKEN_HIGH) + other_bytes + 4


def text_tokens_fair(text: str) -> int:
    """Best guess of the tokens in a piece of text."""
    ascii_bytes, other_bytes = _byte_sizes(text)
    return -(-ascii_bytes // _BYTES_PER_TOKEN_FAIR) + -(-other_bytes // _OTHER_BYTES_PER_TOKEN_FAIR)
