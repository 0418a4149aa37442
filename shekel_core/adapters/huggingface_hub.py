"""Counting ``huggingface_hub`` inference calls.

Patched, on ``InferenceClient`` and ``AsyncInferenceClient``: ``chat_completion`` and ``text_generation``
(``client.chat.completions.create`` resolves to ``chat_completion``, so it is covered too), counted precisely;
every other task method (``feature_extraction``, ``text_to_image``..., see ``_hf_tasks``), counted as a call
and priced per token or per call; and ``_inner_post``, the request every task sends, as a net: a request
that reaches it with no call counted above it (a task method captured before shekel was imported, a task
added by a later huggingface_hub) is counted as a call priced per call.

Count-once rule: this adapter counts every such call made while a budget is active, unless a call is
already being counted higher up (``call_in_progress``): a task method over the ``_inner_post`` it sends,
huggingface_hub's own retry inside ``text_generation``, or an integration handler that counts the call
itself.

Patch once per process, decide per call: with no active budget the wrapper calls the original and does
nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Mapping
from importlib.util import find_spec
from typing import Any

from .. import _sharing as sharing
from .._budget import DEFAULT_MAX_TOKENS_CEILING, Budget, Reservation
from .._call import (
    SKIP,
    CallAccounting,
    Hold,
    before_reserve,
    call_in_progress,
    call_observer,
    iterate_async,
    iterate_sync,
)
from .._context import _active as active_frame
from .._hf_routing import call_provider, is_url
from .._limits import whole_number
from .._pricing import AUTO, ROUTING_POLICIES, split_model
from .._redact import redact_model
from .._tokenizer import chat_prompt_estimates, counts_output, text_prompt_estimates
from .._usage import (
    _field,
    _token_count,
    read_usage,
)
from .._versions import check as check_version
from . import _http_hooks as http_hooks
from ._hf_tasks import TASKS, Task, TaskCall, planner
from ._patches import Patches

#: TGI's own default ``max_new_tokens``: used as the ceiling when the caller gave none, so that text
#: generation inside a budget returns what it would without shekel whenever the budget can pay for it.
TEXT_GENERATION_DEFAULT_MAX_NEW_TOKENS = 100

_patches = Patches()


# ------------------------------------------------------------------------------------------ planning
def _model_of(client: Any, kwargs: Mapping[str, Any]) -> str | None:
    model = kwargs.get("model") or getattr(client, "model", None)
    if not isinstance(model, str):
        return None
    return redact_model(model)


def _provider_of(client: Any, kwargs: Mapping[str, Any]) -> str | None:
    """The Inference Provider to price the call for (see ``shekel._hf_routing``)."""
    address = getattr(client, "model", None)
    if not is_url(address):
        address = kwargs.get("model")
        if not is_url(address):
            address = None
    provider = call_provider(getattr(client, "provider", None), address)
    if provider == AUTO:
        # ``org/model:together`` names the provider the router sends the call to.
        model = kwargs.get("model") or getattr(client, "model", None)
        _, suffix = split_model(model if isinstance(model, str) else None)
        if suffix is not None and suffix not in ROUTING_POLICIES:
            return suffix
    return provider


#: ``(_model_of, _provider_of)`` by (client's model, client's provider, ``model`` argument), all str or None:
#: a client makes the same calls again and again, and working them out costs some 15 function calls.
_targets_cache: dict[tuple[str | None, str | None, str | None], tuple[str | None, str | None]] = {}
_TARGETS_CACHE_SIZE = 256


def _target(client: Any, kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
    """The model id to record and the Inference Provider to price for (``_model_of``, ``_provider_of``)."""
    try:
        address, setting = client.model, client.provider
    except AttributeError:  # not an InferenceClient as huggingface_hub builds it
        return _model_of(client, kwargs), _provider_of(client, kwargs)
    argument = kwargs["model"] if "model" in kwargs else None  # noqa: SIM401
    # Only plain strings are cached: the answer is a pure function of them.
    if (
        (address is None or type(address) is str)
        and (setting is None or type(setting) is str)
        and (argument is None or type(argument) is str)
    ):
        key = (address, setting, argument)
        try:
            return _targets_cache[key]
        except KeyError:
            pass
        target = (_model_of(client, kwargs), _provider_of(client, kwargs))
        if len(_targets_cache) >= _TARGETS_CACHE_SIZE:
            _targets_cache.clear()
        _targets_cache[key] = target
        return target
    return _model_of(client, kwargs), _provider_of(client, kwargs)


_EXTRA_BODY_LIMITS = ("max_tokens", "n", "max_completion_tokens")


def _limits_from_extra_body(kwargs: dict[str, Any]) -> int | None:
    """huggingface_hub merges ``extra_body`` into the request last, so its limits are the ones the provider
    applies. Move ``max_tokens`` and ``n`` from (a copy of) it to the arguments shekel reserves for, which
    sends the same request; return ``max_completion_tokens`` (sent as the whole number it is read as),
    which has no argument of its own."""
    extra = kwargs["extra_body"]
    if not isinstance(extra, Mapping) or not any(k in extra for k in _EXTRA_BODY_LIMITS):
        return None
    extra = dict(extra)
    for key in ("max_tokens", "n"):
        if key in extra:
            kwargs[key] = extra.pop(key)
    kwargs["extra_body"] = extra
    cap = extra.get("max_completion_tokens")
    if cap is None:
        return None
    cap = extra["max_completion_tokens"] = whole_number(cap, "max_completion_tokens")
    return cap


# The plain-dict reads below (``key in kwargs``) are ``kwargs.get(key)`` without a function call: this runs on
# every counted call.
def _plan_chat(target: Budget, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _ChatCall:
    """What a chat completion asks the budget for; its limits are normalised to what is sent."""
    messages = args[0] if args else kwargs.get("messages") or ()
    try:  # _target's cache, inline: the usual call's model and provider were worked out already
        model, provider = _targets_cache[
            (client.model, client.provider, kwargs["model"] if "model" in kwargs else None)  # noqa: SIM401
        ]
    except (KeyError, AttributeError, TypeError):  # not cached, not an InferenceClient, or unhashable
        model, provider = _target(client, kwargs)
    streamed = "stream" in kwargs and bool(kwargs["stream"])
    extra_body = kwargs["extra_body"] if "extra_body" in kwargs else None  # noqa: SIM401
    completion_cap = _limits_from_extra_body(kwargs) if extra_body else None
    n = kwargs["n"] if "n" in kwargs else None  # noqa: SIM401
    if n is None:
        n = 1
    elif not (type(n) is int and n > 0):
        n = kwargs["n"] = whole_number(n, "n")
    max_tokens = kwargs["max_tokens"] if "max_tokens" in kwargs else None  # noqa: SIM401
    if max_tokens is not None and not (type(max_tokens) is int and max_tokens > 0):
        max_tokens = kwargs["max_tokens"] = whole_number(max_tokens, "max_tokens")
    limit = max_tokens
    if completion_cap is not None:
        limit = completion_cap if limit is None else max(limit, completion_cap)
    tools = kwargs["tools"] if "tools" in kwargs else None  # noqa: SIM401
    if type(messages) is not list:
        messages = list(messages)  # read more than once below
    prompt_high, prompt_fair = chat_prompt_estimates(model, messages, tools)
    if target._chain_fallback:  # another model may be sent instead: its tokenizer may count more
        fallback = target._any_fallback()
        if fallback is not None and fallback != model:
            prompt_high = max(prompt_high, chat_prompt_estimates(fallback, messages, tools)[0])
    call = _ChatCall(
        (
            model,
            prompt_high,
            None if limit is None else limit * n,
            DEFAULT_MAX_TOKENS_CEILING * n,
            provider,
        ),
        prompt_fair=prompt_fair,
        source="huggingface_hub.chat_completion",
        streamed=streamed,
    )
    call.n = n
    call.strip = streamed and kwargs.get("stream_options") is None
    if streamed and counts_output(model):
        call.pieces = []
    return call


class _ChatCall(CallAccounting):
    """A chat completion in flight: settles a response, or observes each stream chunk."""

    __slots__ = ("n", "strip")
    media: str | None = None  # priced per token
    #: Choices asked for (``n``); whether shekel asks for the usage chunk (so it must hide it). Set by
    #: ``_plan_chat``.
    n: int
    strip: bool

    def start(self, reservation: Reservation, kwargs: dict[str, Any], observer: Any) -> None:
        """Send what was reserved for: the fallback model, the granted ``max_tokens``, the usage chunk.
        ``observer`` is ``call_observer``'s value, read by the wrapper."""
        self.reservation = reservation  # begin(), inline
        if observer is not None:
            observer(self)
        if reservation.fallback_from is not None:
            kwargs["model"] = reservation.model
        if self.ask[2] is None and reservation.max_tokens is not None and kwargs.get("max_tokens") is None:
            kwargs["max_tokens"] = max(1, reservation.max_tokens // self.n)
        if self.strip:
            kwargs["stream_options"] = {"include_usage": True}

    def _read(self, response: Any) -> None:
        usage = read_usage(response)
        if usage is not None:
            self._usage = usage
        # Attribute reads with try/except are getattr(obj, name, None) without the function calls.
        try:
            choices = response.choices
        except AttributeError:
            choices = None
        for choice in choices or ():
            try:
                message = choice.message
                content = message.content
            except AttributeError:
                message = content = None
            if content:  # saw_output, inline
                if content.__class__ is not str:
                    raise TypeError(f"message content is a {type(content).__name__}")
                self.output_chars += len(content)
                self.output_chunks += 1
            elif message is not None:
                generated = _side_output(message)
                if generated:
                    self.output_chars += generated
                    self.output_chunks += 1
        try:
            model = response.model
        except AttributeError:
            model = None
        self.model_label = model if isinstance(model, str) and model else None

    def observe(self, chunk: Any) -> Any:
        usage = chunk.usage
        if usage is not None:
            self.saw_usage(read_usage(chunk))
        choices = chunk.choices
        if not choices:
            # The usage-only chunk that shekel asked for: the caller would not have received it.
            return SKIP if self.strip and usage is not None else chunk
        finished = False
        for choice in choices:
            delta = choice.delta
            content = delta.content if delta is not None else None
            if content:
                if content.__class__ is not str:
                    raise TypeError(f"delta content is a {type(content).__name__}")
                self.output_chars += len(content)
                self.output_chunks += 1
                if self.pieces is not None:
                    self.pieces.append(content)
            elif delta is not None:
                generated = _side_output(delta)  # a tool call's arguments, reasoning: output too
                if generated:
                    self.output_chars += generated
                    self.output_chunks += 1
            if choice.finish_reason is not None:
                finished = self.answered = True
        if finished and self.strip and usage is None:
            # Read the usage chunk we asked for before handing on the last one: callers may stop here.
            return Hold(chunk)
        return chunk


def _side_output(message: Any) -> int:
    """Characters a message or delta generated besides ``content``: reasoning and tool-call arguments."""
    size = 0
    for key in ("reasoning", "reasoning_content"):
        text = _field(message, key)
        if isinstance(text, str):
            size += len(text)
    tool_calls = _field(message, "tool_calls")
    for tool_call in tool_calls if isinstance(tool_calls, (list, tuple)) else ():
        function = _field(tool_call, "function")
        for key in ("name", "arguments"):
            text = _field(function, key) if function is not None else None
            if isinstance(text, str):
                size += len(text)
    return size


def _unsupported_text_generation_kwargs(model: str | None) -> list[str]:
    try:
        from huggingface_hub.inference._common import _get_unsupported_text_generation_kwargs
    except ImportError:  # a future huggingface_hub: assume TGI, whose answers carry details
        return []
    return list(_get_unsupported_text_generation_kwargs(model))


def _plan_text(target: Budget, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _TextCall:
    """What a text generation asks the budget for; ``details`` are asked for (exact output counts) when the
    server has them."""
    prompt = args[0] if args else kwargs.get("prompt", "")
    prompt = prompt if isinstance(prompt, str) else str(prompt)
    model = _model_of(client, kwargs)
    max_new = kwargs.get("max_new_tokens")
    if max_new is not None:
        max_new = kwargs["max_new_tokens"] = whole_number(max_new, "max_new_tokens")
    prompt_high, prompt_fair = text_prompt_estimates(model, prompt)
    if target._chain_fallback:
        fallback = target._any_fallback()
        if fallback is not None and fallback != model:
            prompt_high = max(prompt_high, text_prompt_estimates(fallback, prompt)[0])
    call = _TextCall(
        (
            model,
            prompt_high,
            max_new,
            TEXT_GENERATION_DEFAULT_MAX_NEW_TOKENS,
            _provider_of(client, kwargs),
        ),
        prompt_fair=prompt_fair,
        source="huggingface_hub.text_generation",
        streamed=bool(kwargs.get("stream")),
        model_label=model,
    )
    call.added_details = kwargs.get(
        "details"
    ) is None and "details" not in _unsupported_text_generation_kwargs(model)
    return call


class _TextCall(CallAccounting):
    """A text generation in flight. Gives the caller exactly what it asked for (details or not)."""

    __slots__ = ("added_details",)
    media: str | None = None  # priced per token
    #: Whether shekel asks for ``details`` (so it must hand back plain text); set by ``_plan_text``.
    added_details: bool

    def start(self, reservation: Reservation, kwargs: dict[str, Any], observer: Any) -> None:
        self.reservation = reservation  # begin(), inline
        if observer is not None:
            observer(self)
        if reservation.fallback_from is not None:
            kwargs["model"] = reservation.model
        if kwargs.get("max_new_tokens") is None and reservation.max_tokens is not None:
            kwargs["max_new_tokens"] = reservation.max_tokens
        if self.added_details:
            kwargs["details"] = True

    def settle(self, response: Any) -> Any:
        if isinstance(response, str):
            self.saw_output(response)
            self.finish()
            return response
        try:
            # Malformed counts (negative, absurd, not whole) are ignored, as in ``usage``: the text is
            # estimated.
            tokens = _token_count(getattr(getattr(response, "details", None), "generated_tokens", None))
            if tokens is not None:
                self.saw_output_tokens(tokens)
            else:
                self.saw_output(getattr(response, "generated_text", None))
        except Exception:
            self.unreadable = True
        self.finish()
        if not self.added_details:
            return response
        try:
            return response.generated_text  # what the caller gets without details
        except Exception:
            return response

    def observe(self, chunk: Any) -> Any:
        self.output_chunks += 1  # TGI streams one token per event
        if isinstance(chunk, str):
            return chunk
        details = chunk.details
        if details is not None:
            self.answered = True
            tokens = _token_count(details.generated_tokens)
            if tokens is not None:
                self.output_chunks = tokens
        return chunk.token.text if self.added_details else chunk


# ------------------------------------------------------------------------------------------ wrappers
Planner = Callable[[Budget, Any, tuple[Any, ...], dict[str, Any]], "_ChatCall | _TextCall | TaskCall"]


def _wrap_sync(original: Callable[..., Any], plan: Planner) -> Callable[..., Any]:
    @functools.wraps(original)
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if call_in_progress.get():  # first: the usual case inside a counted call (the _inner_post net)
            return original(self, *args, **kwargs)
        frame = active_frame.get()  # current_budget(), inline
        budget = None if frame is None else frame.budget
        if budget is None:
            return original(self, *args, **kwargs)
        observer = call_observer.get()  # before_reserve(), inline: usually there is no observer
        target = (observer is not None and before_reserve()) or budget
        pending = plan(target, self, args, kwargs)
        media = pending.media
        reservation = (
            target.reserve_call(pending.ask)
            if media is None
            else target.reserve_call(pending.ask, media=media)
        )
        pending.start(reservation, kwargs, observer)
        token = call_in_progress.set(pending)
        try:
            if http_hooks.attach_sync():
                pending.sent = False
            result = original(self, *args, **kwargs)
        except BaseException as error:
            pending.end_with(error)
            raise
        finally:
            call_in_progress.reset(token)
        if pending.streamed:
            return iterate_sync(pending, result, pending.observe)
        return pending.settle(result)

    counted.__shekel_original__ = original  # type: ignore[attr-defined]
    return counted


def _wrap_async(original: Callable[..., Any], plan: Planner) -> Callable[..., Any]:
    @functools.wraps(original)
    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if call_in_progress.get():  # first: the usual case inside a counted call (the _inner_post net)
            return await original(self, *args, **kwargs)
        frame = active_frame.get()  # current_budget(), inline
        budget = None if frame is None else frame.budget
        if budget is None:
            return await original(self, *args, **kwargs)
        observer = call_observer.get()
        target = (observer is not None and before_reserve()) or budget
        pending = plan(target, self, args, kwargs)
        media = pending.media
        task = asyncio.current_task()
        reservation = await (
            target.areserve_call(pending.ask, task)
            if media is None
            else target.areserve_call(pending.ask, task, media=media)
        )
        pending.start(reservation, kwargs, observer)
        token = call_in_progress.set(pending)
        try:
            if await http_hooks.attach_async(self):
                pending.sent = False
            result = await original(self, *args, **kwargs)
        except BaseException as error:
            pending.end_with(error)
            raise
        finally:
            call_in_progress.reset(token)
        if pending.streamed:
            return iterate_async(pending, result, pending.observe)
        answer = pending.settle(result)
        if pending.reservation.settling:  # a shared budget's store: settled before the caller goes on
            await sharing.settled(pending.reservation)
        return answer

    counted.__shekel_original__ = original  # type: ignore[attr-defined]
    return counted


# ------------------------------------------------------------------------------------------ the net
class _PostCall(TaskCall):
    """A request that reached ``_inner_post`` with no call counted above it: priced per call."""

    __slots__ = ()

    def start(self, reservation: Reservation, kwargs: dict[str, Any], observer: Any) -> None:
        # The request is built: a fallback model cannot be sent instead (it is charged as reserved).
        self.reservation = reservation
        if observer is not None:
            observer(self)


def _plan_post(target: Budget, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskCall:
    request = args[0] if args else kwargs.get("request_parameters")
    model = getattr(request, "model", None)
    if not isinstance(model, str) or not model:
        model = getattr(client, "model", None)
    model = redact_model(model) if isinstance(model, str) else None
    task = getattr(request, "task", None)
    task = task if isinstance(task, str) and task else "unknown"
    call = _PostCall(
        (model, 0, 0, 0, _provider_of(client, {})),
        prompt_fair=0,
        source=f"huggingface_hub.{task}",
        streamed=False,
        model_label=model,
    )
    call.output_attr = None
    call.media = task
    return call


# ------------------------------------------------------------------------------------------ install
def available() -> bool:
    """Whether huggingface_hub can be imported here."""
    return find_spec("huggingface_hub") is not None


#: The modules defining the clients, each client's name, and whether it is the async one. The import hook
#: (``shekel._patching``) installs each client's patches as its module is loaded, importing nothing else.
MODULES: Mapping[str, tuple[str, bool]] = {
    "huggingface_hub.inference._client": ("InferenceClient", False),
    "huggingface_hub.inference._generated._async_client": ("AsyncInferenceClient", True),
}


def _task_wrapper(
    task: Task, wrap: Callable[[Callable[..., Any], Planner], Callable[..., Any]]
) -> Callable[[Any], Any]:
    def wrap_task(original: Any) -> Any:
        return wrap(original, planner(task, original, _target))

    return wrap_task


def _wrappers(cls: type, is_async: bool) -> list[tuple[str, Callable[[Any], Any]]]:
    wrap = _wrap_async if is_async else _wrap_sync
    methods: list[tuple[str, Callable[[Any], Any]]] = [
        ("chat_completion", lambda f: wrap(f, _plan_chat)),
        ("text_generation", lambda f: wrap(f, _plan_text)),
    ]
    for name, task in TASKS.items():
        if name in cls.__dict__:  # tasks a huggingface_hub lacks are simply not there to count
            methods.append((name, _task_wrapper(task, wrap)))
    if "_inner_post" in cls.__dict__:
        methods.append(("_inner_post", lambda f: wrap(f, _plan_post)))
    return methods


def install_loaded() -> bool:
    """Patch the clients whose modules are loaded, importing nothing. Idempotent; returns whether any is."""
    found = False
    for module_name, (class_name, is_async) in MODULES.items():
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if not isinstance(cls, type):
            continue
        if not found:
            check_version("huggingface_hub", "huggingface")
            found = True
        for name, wrap in _wrappers(cls, is_async):
            _patches.install(cls, name, wrap)
    return found


def install() -> bool:
    """Patch the clients, importing them. Idempotent; returns False (and does nothing) without
    huggingface_hub."""
    if not available():
        return False
    from huggingface_hub import AsyncInferenceClient, InferenceClient  # noqa: F401  (loads both modules)

    return install_loaded()


def uninstall() -> None:
    """Put back the exact original methods, where our wrapper is still the one in place. Idempotent."""
    _patches.uninstall()
    http_hooks.detach()
