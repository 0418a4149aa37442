"""Exact token counts from the model's own tokenizer, when it is in the local Hugging Face cache.

With the extra ``tokenizers`` installed (the ``tokenizers`` package and jinja2) and the model's
``tokenizer.json`` in the local Hugging Face cache, a chat prompt is counted the way the model's server
counts it: the chat template (``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``) is
rendered as transformers' ``apply_chat_template`` renders it (a sandboxed jinja2 environment with
``trim_blocks`` and ``lstrip_blocks``, its ``tojson`` filter, ``raise_exception``, ``strftime_now``, the
special tokens of ``tokenizer_config.json``, ``add_generation_prompt=True``), then encoded without adding
special tokens, as transformers, TGI and vLLM encode templated text. A text-generation prompt is encoded with
the tokenizer's special tokens, as TGI encodes it.

Nothing is downloaded unless the application opts in (``SHEKEL_TOKENIZER_DOWNLOAD=1``, or
``shekel.tokenizers.allow_download()``). Tokenizers are loaded once per model and kept in a small LRU
(``MAX_TOKENIZERS``); a model without one is remembered as absent for ``ABSENT_RETRY_SECONDS``, after which
the cache is looked at again. Compiled templates are cached by their text.

Importing this module imports neither ``tokenizers`` nor jinja2 nor ``huggingface_hub``: they are imported by
the first count. Every function here answers None (or the byte heuristic, for the ``*_estimates``) rather
than raise into the call it is counting.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from ._usage import prompt_tokens_estimates, text_tokens_fair, text_tokens_high

#: Tokenizers kept loaded at once (least recently used first out). A large vocabulary (Llama 3, Qwen 3)
#: holds about 30 MiB once loaded; a process's first load leaves 60 to 90 MiB more resident (what parsing
#: tokenizer.json used, which the allocator keeps and later loads reuse). Measured in benchmarks/.
MAX_TOKENIZERS = 8
#: How long a model whose tokenizer could not be found (or loaded) is taken as having none, before the
#: local cache is looked at again: a tokenizer downloaded meanwhile is used from then on.
ABSENT_RETRY_SECONDS = 60.0
#: The environment variable that allows downloading a missing tokenizer from the Hub (``1``, ``true``, ``yes``).
DOWNLOAD_ENV = "SHEKEL_TOKENIZER_DOWNLOAD"

#: Tokens added to an exact chat prompt count for the reservation, so that it stays an upper bound when the
#: server renders the same template a little differently. Measured with Qwen3's and Llama 3.2's tokenizers
#: (docs/hard-caps.md): a BOS encoded a second time (vLLM's ``add_special_tokens=True``) 1; an empty thinking
#: block (Qwen3 with ``enable_thinking=False``) 4 to 6; a short default system prompt ("You are a helpful
#: assistant.") 11 to 19; a Llama 3 date line of another day 0.
PROMPT_MARGIN_TOKENS = 24
#: Per message: whitespace a server's template adds or strips around each turn.
PROMPT_MARGIN_PER_MESSAGE = 1
#: When tools are given: TGI adds its own ``notify_error`` tool (66 tokens as JSON) and may add its tool
#: prompt (52 tokens) to the conversation.
PROMPT_MARGIN_TOOLS = 128
#: Per 100 prompt tokens: a server whose tokenizer version splits some text differently (not measured here:
#: insurance proportional to the prompt).
PROMPT_MARGIN_PERCENT = 1

#: Added to an exact text-generation prompt: no template is rendered, so only the special tokens a server
#: adds differently (a BOS, an EOS) can differ.
TEXT_MARGIN_TOKENS = 4

_TRUE = ("1", "true", "yes", "on")
_TEXT_PART_JOIN = "\n"  # how vLLM joins a message's text parts for text-only templates (TGI joins with "")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b")


class TokenizerCacheInfo(NamedTuple):
    """What the tokenizer cache holds: see ``shekel.tokenizers.cache_info()``."""

    #: Model repositories whose tokenizer is loaded, least recently used first.
    loaded: tuple[str, ...]
    #: Model repositories taken as having no tokenizer, each with the reason, until they are looked up again.
    absent: dict[str, str]
    #: Tokenizers loaded since the process started (or ``clear_cache()``): one per model unless evicted.
    loads: int
    #: Counts answered from a loaded tokenizer.
    hits: int
    #: Seconds each loaded tokenizer took to load (files read, tokenizer built, templates compiled).
    load_seconds: dict[str, float]
    #: Loaded models whose chat prompts are not counted (text still is), with the reason: no chat template,
    #: one jinja2 cannot compile, jinja2 missing or too old.
    template_errors: dict[str, str]


class _Loaded:
    """A model's tokenizer, its compiled chat templates and the special tokens its templates see."""

    __slots__ = (
        "encode",
        "load_seconds",
        "special_tokens",
        "template",
        "template_error",
        "tool_template",
        "tools_rendered",
    )

    def __init__(
        self,
        encode: Callable[..., Any],
        template: Any,
        tool_template: Any,
        template_error: str | None,
        special_tokens: dict[str, str],
        load_seconds: float,
        tools_rendered: bool = True,
    ) -> None:
        self.encode = encode
        #: Whether the template used with tools reads ``tools``; if not, a server adds them as text (TGI).
        self.tools_rendered = tools_rendered
        self.template = template
        self.tool_template = tool_template
        self.template_error = template_error
        self.special_tokens = special_tokens
        self.load_seconds = load_seconds


_lock = threading.Lock()
_loaded: OrderedDict[str, _Loaded] = OrderedDict()
#: repo id -> (monotonic time until which it is taken as absent, the reason)
_absent: dict[str, tuple[float, str]] = {}
_loading: dict[str, threading.Lock] = {}
_stats = {"loads": 0, "hits": 0}
_download_setting: bool | None = None
#: Model strings as callers pass them (``org/name:provider``, URLs) that have no tokenizer, until when: the
#: path every call of a model without one takes, so it is one dictionary look-up (and a clock read).
_FOREVER = float("inf")
_no_tokenizer: dict[str, float] = {}


# ------------------------------------------------------------------------------------------ public API
def prompt_tokens(model: str | None, messages: Iterable[object], tools: object = None) -> int | None:
    """The exact prompt tokens of a chat completion, template included, or None when it cannot be counted.

    None when: the model is not a Hub model id (a URL; a ``:provider`` suffix is ignored), its tokenizer is
    not in the local cache (or the extra is not installed), it has no usable chat template, a message holds
    an image or other non-text part, or the template refuses the messages (``raise_exception``).
    """
    counted = _exact(model, messages, tools)
    return None if counted is None else counted[0]


def _exact(model: str | None, messages: Iterable[object], tools: object) -> tuple[int, int] | None:
    """``(the template's count, tokens of tools the template ignores)``: a server whose template does not
    render the tools puts them into the prompt as JSON itself (TGI), so they are counted for it."""
    loaded = _tokenizer_for(model)
    if loaded is None:
        return None
    try:
        text = _render(loaded, messages, tools)
        if text is None:
            return None
        count = len(loaded.encode(text, add_special_tokens=False))
        if tools is None or loaded.tools_rendered:
            return count, 0
        return count, len(
            loaded.encode(json.dumps(_plain(tools), ensure_ascii=False), add_special_tokens=False)
        )
    except Exception:  # a template that raises or trips the sandbox: no exact count, the heuristic applies
        return None


def text_tokens(model: str | None, text: str) -> int | None:
    """The exact tokens of a text-generation prompt, with the special tokens the tokenizer adds (as TGI)."""
    loaded = _tokenizer_for(model)
    if loaded is None or not isinstance(text, str):
        return None
    try:
        return len(loaded.encode(text, add_special_tokens=True))
    except Exception:
        return None


def output_tokens(model: str | None, text: str | Iterable[str]) -> int | None:
    """The tokens of generated text (a string or its pieces, as streamed), without special tokens.

    For a stream without usage: the end-of-sequence token a server counts when the model stopped by itself
    is not in the text, so add one for it when the stream finished with ``stop``.
    """
    loaded = _tokenizer_for(model)
    if loaded is None:
        return None
    try:
        joined = text if isinstance(text, str) else "".join(text)
        return len(loaded.encode(joined, add_special_tokens=False)) if joined else 0
    except Exception:
        return None


def chat_prompt_estimates(
    model: str | None, messages: Iterable[object], tools: object = None
) -> tuple[int, int]:
    """``(prompt_tokens_high, prompt_tokens_fair)`` of a chat prompt: the exact count plus a margin and the
    exact count when the tokenizer is at hand, else the byte heuristic of ``_usage.prompt_tokens_estimates``.

    A drop-in for ``prompt_tokens_estimates(messages, tools)``.
    """
    if type(messages) is not list and type(messages) is not tuple:
        messages = list(messages)  # read twice when the exact count is not possible
    if type(model) is not str:
        return prompt_tokens_estimates(messages, tools)
    until = _no_tokenizer.get(model)  # the usual case without tokenizers, inline
    if until is not None and (until is _FOREVER or until > time.monotonic()):
        return prompt_tokens_estimates(messages, tools)
    counted = _exact(model, messages, tools)
    if counted is None:
        return prompt_tokens_estimates(messages, tools)
    exact = counted[0] + counted[1]
    return exact + prompt_margin(exact, len(messages), tools is not None), exact


def text_prompt_estimates(model: str | None, text: str) -> tuple[int, int]:
    """``(high, fair)`` of a text-generation prompt: the exact count plus ``TEXT_MARGIN_TOKENS`` and 1%, and the
    exact count; or the byte heuristic (``text_tokens_high``, ``text_tokens_fair``) without the tokenizer.

    A drop-in for ``text_tokens_high(text), text_tokens_fair(text)``.
    """
    exact = text_tokens(model, text)
    if exact is None:
        return text_tokens_high(text), text_tokens_fair(text)
    return exact + TEXT_MARGIN_TOKENS + -(-exact * PROMPT_MARGIN_PERCENT // 100), exact


def prompt_margin(exact: int, messages: int, tools: bool) -> int:
    """Tokens added to an exact chat prompt count so that the reservation stays an upper bound."""
    margin = (
        PROMPT_MARGIN_TOKENS + messages * PROMPT_MARGIN_PER_MESSAGE + -(-exact * PROMPT_MARGIN_PERCENT // 100)
    )
    return margin + PROMPT_MARGIN_TOOLS if tools else margin


def preload(*models: str) -> dict[str, bool]:
    """Load the tokenizers of ``models`` now (at start-up) rather than on each model's first call.

    Loading a large tokenizer (Llama 3's, Qwen3's) takes about 0.5 to 1 s of CPU and holds the GIL, so every
    thread of the process waits while it runs. Returns, for each model, whether its tokenizer is loaded.
    """
    return {model: _tokenizer_for(model) is not None for model in models}


def allow_download(enabled: bool | None = True) -> None:
    """Allow (or, with False, forbid) downloading a model's tokenizer files from the Hub on its first call.

    None goes back to the environment variable ``SHEKEL_TOKENIZER_DOWNLOAD``. Off by default: without it,
    only tokenizers already in the local Hugging Face cache are used. Models already taken as absent are
    looked up again.
    """
    global _download_setting
    _download_setting = enabled
    with _lock:
        _absent.clear()
        _no_tokenizer.clear()


def clear_cache() -> None:
    """Forget every loaded tokenizer and every model taken as absent; reset the counters."""
    with _lock:
        _loaded.clear()
        _absent.clear()
        _no_tokenizer.clear()
        _stats["loads"] = _stats["hits"] = 0
    _repo_id.cache_clear()


def cache_info() -> TokenizerCacheInfo:
    """What the cache holds now."""
    now = time.monotonic()
    with _lock:
        return TokenizerCacheInfo(
            loaded=tuple(_loaded),
            absent={repo: reason for repo, (until, reason) in _absent.items() if until > now},
            loads=_stats["loads"],
            hits=_stats["hits"],
            load_seconds={repo: entry.load_seconds for repo, entry in _loaded.items()},
            template_errors={
                repo: entry.template_error
                for repo, entry in _loaded.items()
                if entry.template_error is not None
            },
        )


# ------------------------------------------------------------------------------------------ the cache
@lru_cache(maxsize=256)
def _repo_id(model: str) -> str | None:
    """The Hub repository of a model id: ``org/name`` (``org/name:provider`` too); None for anything else."""
    if model.startswith(("http://", "https://")) or "://" in model:
        return None
    repo = model.split(":", 1)[0]  # "org/name:together", "org/name:fastest": the policy is not part of it
    if (
        not _REPO_ID.fullmatch(repo)
        or "--" in repo
        or ".." in repo
        or repo.endswith(".git")
        or not any(c.isalnum() for c in repo)
    ):
        return None
    return repo


def _tokenizer_for(model: str | None) -> _Loaded | None:
    if type(model) is not str:
        return None
    until = _no_tokenizer.get(model)
    if until is not None and (until is _FOREVER or until > time.monotonic()):
        return None
    repo = _repo_id(model) if model else None
    if repo is None:
        _remember_none(model, _FOREVER)
        return None
    with _lock:
        loaded = _loaded.get(repo)
        if loaded is not None:
            _loaded.move_to_end(repo)
            _stats["hits"] += 1
            return loaded
        absent = _absent.get(repo)
        if absent is not None and absent[0] > time.monotonic():
            _remember_none(model, absent[0])
            return None
        loading = _loading.setdefault(repo, threading.Lock())
    # One thread loads a model; the others wait for it rather than load it again.
    with loading:
        with _lock:
            loaded = _loaded.get(repo)
            if loaded is not None:
                _stats["hits"] += 1
                return loaded
            absent = _absent.get(repo)
            if absent is not None and absent[0] > time.monotonic():
                _remember_none(model, absent[0])
                return None
        try:
            result: _Loaded | str = _load(repo)
        except Exception as exc:  # a corrupt file, an unreadable cache: the model has no tokenizer for now
            result = f"loading failed: {type(exc).__name__}"
        with _lock:
            _loading.pop(repo, None)
            if isinstance(result, str):
                if len(_absent) >= 1024:
                    _absent.clear()
                until = time.monotonic() + ABSENT_RETRY_SECONDS
                _absent[repo] = (until, result)
                _remember_none(model, until)
                return None
            _absent.pop(repo, None)
            _loaded[repo] = result
            _stats["loads"] += 1
            while len(_loaded) > MAX_TOKENIZERS:
                _loaded.popitem(last=False)
            _stats["hits"] += 1
            return result


def _remember_none(model: str, until: float) -> None:
    if len(_no_tokenizer) >= 1024:
        _no_tokenizer.clear()
    _no_tokenizer[model] = until


def _hub_cache() -> str:
    """The Hugging Face cache folder, read from the environment now, as huggingface_hub reads it at import."""
    env = os.environ
    path = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if path:
        return os.path.expanduser(os.path.expandvars(path))
    home = env.get("HF_HOME")
    if home:
        return os.path.join(os.path.expanduser(os.path.expandvars(home)), "hub")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def _download_allowed() -> bool:
    if _download_setting is not None:
        return _download_setting
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in _TRUE


def _cached_file(repo: str, filename: str, cache_dir: str, download: bool) -> str | None:
    """The local path of one file of the model's repository (main revision), or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    if isinstance(path, str):
        return path
    if not download or path is not None:  # not cached, or cached as absent from the repository
        return None
    from huggingface_hub import hf_hub_download

    try:
        # HF_ENDPOINT read now, as the cache folder is (huggingface_hub reads both once, at import).
        endpoint = os.environ.get("HF_ENDPOINT") or None
        return str(hf_hub_download(repo, filename, cache_dir=cache_dir, endpoint=endpoint))
    except Exception:  # not in the repository, gated, offline, no network: as if absent
        return None


def _load(repo: str) -> _Loaded | str:
    """The model's tokenizer and templates, or the reason it has none."""
    started = time.perf_counter()
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return 'the tokenizers package is not installed (pip install "shekel[tokenizers]")'
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return 'huggingface_hub is not installed (pip install "shekel[huggingface]")'
    cache_dir = _hub_cache()
    download = _download_allowed()
    path = _cached_file(repo, "tokenizer.json", cache_dir, download)
    if path is None:
        where = (
            "in the local Hugging Face cache or on the Hub" if download else "in the local Hugging Face cache"
        )
        return f"no tokenizer.json {where} ({cache_dir})"
    tokenizer = Tokenizer.from_file(path)
    # A tokenizer.json may carry truncation (embedding models: 512) or padding: neither belongs in a count.
    # Set once here, before the tokenizer is shared: later it is only read (``encode`` takes it shared).
    tokenizer.no_truncation()
    tokenizer.no_padding()
    config: dict[str, Any] = {}
    config_path = _cached_file(repo, "tokenizer_config.json", cache_dir, download)
    if config_path is not None:
        with open(config_path, encoding="utf-8") as file:
            read = json.load(file)
        config = read if isinstance(read, dict) else {}
    template_path = _cached_file(repo, "chat_template.jinja", cache_dir, download)
    templates = _templates(config, template_path)
    if "tool_use" not in templates:
        tool_use_path = _cached_file(repo, "additional_chat_templates/tool_use.jinja", cache_dir, False)
        if tool_use_path is not None:
            with open(tool_use_path, encoding="utf-8") as file:
                templates["tool_use"] = file.read()
    template = tool_template = None
    error: str | None = None
    tools_rendered = True
    try:
        default = templates.get("default")
        template = None if default is None else _compile(default)
        tool_use = templates.get("tool_use")
        tool_template = None if tool_use is None else _compile(tool_use)
        with_tools = tool_use if tool_use is not None else default
        tools_rendered = with_tools is None or "tools" in _variables(with_tools)
        if default is None:
            error = "no default chat template" if templates else "no chat template"
    except ImportError as exc:  # no jinja2, or one whose sandbox is not safe for templates from the Hub
        error = (
            str(exc)
            if "older than" in str(exc)
            else 'jinja2 is not installed (pip install "shekel[tokenizers]")'
        )
    except Exception as exc:  # a template jinja2 cannot compile: text counts still work
        error = f"the chat template does not compile: {type(exc).__name__}"
    return _Loaded(
        encode=tokenizer.encode,
        template=template,
        tool_template=tool_template,
        template_error=error,
        special_tokens=_special_tokens(config),
        load_seconds=time.perf_counter() - started,
        tools_rendered=tools_rendered,
    )


def _templates(config: Mapping[str, Any], template_path: str | None) -> dict[str, str]:
    """The model's chat templates by name, as transformers reads them: ``chat_template.jinja`` first."""
    templates: dict[str, str] = {}
    value = config.get("chat_template")
    if isinstance(value, str):
        templates["default"] = value
    elif isinstance(value, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        for item in value:
            if (
                isinstance(item, dict)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)
            ):
                templates[item["name"]] = item["template"]
    if template_path is not None:
        with open(template_path, encoding="utf-8") as file:
            templates["default"] = file.read()
    return templates


def _special_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    """``bos_token``, ``eos_token`` and every other ``*_token`` of the config, as strings, for the template.

    transformers passes its named special tokens and (since v5) the model's own ``*_token`` entries; a value
    is a string or an ``AddedToken`` written as a dict with its ``content``.
    """
    tokens: dict[str, str] = {}
    for key, value in config.items():
        if not key.endswith("_token"):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


# ------------------------------------------------------------------------------------------ rendering
def _render(loaded: _Loaded, messages: Iterable[object], tools: object) -> str | None:
    template = (
        loaded.tool_template if tools is not None and loaded.tool_template is not None else loaded.template
    )
    if template is None:
        return None
    chat = _chat(messages)
    if chat is None:
        return None
    tool_schemas = None if tools is None else _plain(list(tools) if isinstance(tools, tuple) else tools)
    rendered: str = template.render(
        messages=chat,
        tools=tool_schemas,
        documents=None,
        add_generation_prompt=True,
        **loaded.special_tokens,
    )
    return rendered


def _chat(messages: Iterable[object]) -> list[dict[str, Any]] | None:
    """The messages as plain dicts, as transformers hands them to a template (keys holding None dropped);
    None when one cannot be counted (an image or other non-text part, no ``role``, an object of unknown
    shape)."""
    chat: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, Mapping):  # dicts and huggingface_hub's types (dict subclasses)
            items: Iterable[tuple[Any, Any]] = message.items()
        elif is_dataclass(message) and not isinstance(message, type):
            items = [(field.name, getattr(message, field.name)) for field in fields(message)]
        elif callable(getattr(message, "model_dump", None)):
            items = message.model_dump().items()  # type: ignore[attr-defined]
        else:
            return None
        plain: dict[str, Any] = {}
        for key, value in items:
            if value is None:
                continue
            if key == "content" and type(value) is not str:
                value = _text_content(value)
                if value is None:
                    return None
            else:
                value = _plain(value)
            plain[key if type(key) is str else str(key)] = value
        if (
            type(plain.get("role")) is not str
        ):  # not a chat message as templates read it (LangChain's objects)
            return None
        for name in _REASONING_FIELDS:
            reasoning = plain.get(name)
            if reasoning is not None:  # transformers fills the names templates read from older ones
                plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
                break
        chat.append(plain)
    return chat


def _text_content(content: object) -> str | None:
    """A message's content as one string: text parts joined; None for any image, audio or unknown part."""
    if isinstance(content, str):
        return str(content)
    if not isinstance(content, (list, tuple)):
        return None
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if isinstance(part, Mapping):
            kind, text = part.get("type"), part.get("text")
            other = any(
                part.get(key) is not None for key in ("image_url", "input_audio", "video_url", "file")
            )
        else:
            kind, text = getattr(part, "type", None), getattr(part, "text", None)
            other = getattr(part, "image_url", None) is not None
        if kind not in (None, "text") or other or not isinstance(text, str):
            return None
        texts.append(text)
    return _TEXT_PART_JOIN.join(texts)


def _plain(value: Any) -> Any:
    """What a template may see: JSON-like data only (transformers rebuilds its inputs the same way, so that
    no object with methods reaches the sandbox)."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is float or kind is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump())
    return f"<{kind.__name__}>"


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    """A chat template compiled once per distinct text (models of one family share theirs)."""
    return _environment().from_string(source)


@lru_cache(maxsize=32)
def _variables(source: str) -> frozenset[str]:
    """The variables a template reads from its caller (``messages``, ``tools``, ``bos_token``...)."""
    import jinja2.meta

    return frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(source)))


@lru_cache(maxsize=1)
def _environment() -> Any:
    """The jinja2 environment transformers renders chat templates in, rebuilt from its documented behaviour:
    sandboxed and immutable, ``trim_blocks`` and ``lstrip_blocks``, ``break``/``continue``, the
    ``{% generation %}`` block, a ``tojson`` that does not escape HTML, ``raise_exception``, ``strftime_now``,
    and ``dict``/``namespace`` that refuse underscore names."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    release = tuple(int(part) for part in re.findall(r"\d+", jinja2.__version__)[:3])
    if release < (3, 1, 6):  # earlier sandboxes can be escaped, and templates come from the Hub
        raise ImportError(
            f'jinja2 {jinja2.__version__} is older than 3.1.6 (pip install "shekel[tokenizers]")'
        )

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks: the text is
        rendered as it is (transformers tracks where it falls; a count does not need to)."""

        tags = {"generation"}  # noqa: RUF012 (jinja2 reads the class attribute)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    def raise_exception(message: object) -> None:
        raise jinja2.exceptions.TemplateError(str(message))

    def tojson(
        value: object,
        ensure_ascii: bool = False,
        indent: int | str | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    def check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")

    class SafeDict:
        """``dict(...)`` in a template: builds a plain dict, with no attribute to reach further from."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args)

    class SafeNamespace(jinja2.utils.Namespace):
        """``namespace(...)`` in a template, refusing underscore attributes."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = SafeDict()
    environment.globals["namespace"] = SafeNamespace
    return environment
