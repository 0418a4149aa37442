"""Budgets for LlamaIndex: :class:`BudgetCallbackHandler`, a handler for a ``CallbackManager``.

>>> from llama_index.core import Settings
>>> from llama_index.core.callbacks import CallbackManager
>>> from shekel.integrations.llamaindex import BudgetCallbackHandler
>>> Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])

Count-once rule. Every LLM call is counted by exactly one layer:

* Calls that go through ``huggingface_hub`` (``HuggingFaceInferenceAPI`` and anything else built on
  ``InferenceClient``) are counted by the Hugging Face adapter, which sees the HTTP request and response
  (it reserves, caps ``max_tokens``, reads the usage of streams). This handler never counts them: it skips
  LLM events of the classes in ``COUNTED_BY_ADAPTER`` and LLM events raised while the adapter is already
  counting a call (``call_in_progress``). For a handler bound to a budget it only makes that budget the
  active one around each call of ``HuggingFaceInferenceAPI`` (a patch of its eight call methods, because
  that LLM emits no LLM events to hook).
* Any other LlamaIndex LLM is counted here, from its LLM callback events: reserved when the event starts
  (a refusal raises ``BudgetExceededError`` out of ``on_event_start``, which LlamaIndex propagates, so the
  request is never sent), settled at the usage its response reports when the event ends, released when it
  failed. A stream abandoned part-way ends with no response: it is charged for the chunks it handed to its
  reader, seen through LlamaIndex's instrumentation (``_ChunkWatcher``). A stream dropped before it is read
  sends no end event: it is released when it is garbage-collected (``_SpanWatcher`` sees the stream its LLM
  method returns). An LLM event inside another LLM event (a ``CustomLLM``'s ``chat`` calling its ``complete``) is
  the same call and is not counted again (see ``_open_llm_event``).
* An LLM of another package that calls ``InferenceClient`` itself emits LLM events the handler counts, and
  HTTP calls the adapter counts. The handler listens for the adapter's calls (``shekel._call.call_observer``)
  while the LLM method runs and while its stream is read: when the adapter counts a call for the event, the
  handler gives back its reservation and leaves the charge to the adapter.

The handler also refuses to start a query, an agent step or a sub-question when its budget cannot pay
even for the smallest call, before retrieval or embedding runs.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

try:
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.callbacks.base import global_stack_trace_ids
    from llama_index.core.callbacks.base_handler import BaseCallbackHandler
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.llm import (
        LLMChatInProgressEvent,
        LLMCompletionInProgressEvent,
    )
    from llama_index.core.instrumentation.span import active_span_id
    from llama_index.core.instrumentation.span_handlers import NullSpanHandler
    from llama_index_instrumentation import root_dispatcher  # LlamaIndex's root (llama_index.core's too)
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        'shekel.integrations.llamaindex needs LlamaIndex: pip install "shekel[llamaindex]"'
    ) from exc

from shekel._budget import DEFAULT_MAX_TOKENS_CEILING, Budget
from shekel._call import CallAccounting, call_in_progress, call_observer
from shekel._context import activated, current_budget
from shekel._usage import Usage, prompt_tokens_fair, prompt_tokens_high, read_usage, text_tokens_fair
from shekel._usage import text_tokens_high as _text_tokens_high

__all__ = ["COUNTED_BY_ADAPTER", "BudgetCallbackHandler", "install", "uninstall"]

#: LLM classes (their ``class_name()``) whose calls the Hugging Face adapter counts, never this handler.
COUNTED_BY_ADAPTER = frozenset({"HuggingFaceInferenceAPI"})

#: Events that start work which leads to LLM calls: refused up front when the budget has nothing left.
_GATED_EVENTS = frozenset({CBEventType.QUERY, CBEventType.AGENT_STEP, CBEventType.SUB_QUESTION})


class BudgetCallbackHandler(BaseCallbackHandler):
    """Puts LlamaIndex queries, chats and agent steps under a shekel budget.

    Args:
        budget: The budget to charge. Without it, each call is charged to the budget active where it runs
            (the innermost ``with budget(...)``), and nothing is counted outside a budget. With it, calls
            are charged to ``budget`` even outside any ``with`` block; inside a budget nested in ``budget``
            they go to that inner budget (which passes them on to ``budget``). Inside an unrelated budget
            they go to ``budget`` (and its own parents) only: a bound budget is never attached to whichever
            budget happens to be active, so one service-wide budget can serve many request budgets.

    Add it to ``Settings.callback_manager`` (or to the ``callback_manager`` of an engine or an LLM).
    ``HuggingFaceInferenceAPI`` calls are counted by shekel's Hugging Face adapter; LLMs that report usage
    through LlamaIndex LLM events are counted by this handler at the budget's prices.
    """

    def __init__(self, budget: Budget | None = None) -> None:
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(
                f"BudgetCallbackHandler(budget=...) takes a shekel budget (shekel.budget(...)), got {budget!r}."
            )
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.budget = budget
        _watch_llm_methods()
        if budget is not None:
            install()

    def __repr__(self) -> str:
        return f"<BudgetCallbackHandler budget={self.budget!r}>"

    # ---------------------------------------------------------------- the callback interface
    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        """Refuse work the budget cannot pay for; reserve the cost of an LLM event this handler counts."""
        if event_type is CBEventType.LLM:
            self._start_llm(payload or {}, event_id)
        elif event_type in _GATED_EVENTS:
            target = _charge_target(self.budget)
            if target is not None:
                _refuse_if_spent(target, _query_text(payload or {}))
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        """Settle an LLM event at its reported (or estimated) usage, or release it when it failed."""
        if event_type is not CBEventType.LLM:
            return
        event = _counted_events.pop(event_id, None)
        if event is None:
            return
        payload = payload or {}
        error = payload.get(EventPayload.EXCEPTION)
        if error is not None and not isinstance(error, GeneratorExit):
            _end(event, failed=True)
            return
        # A stream abandoned by its reader ends with GeneratorExit and no response: charge what it delivered.
        _end(
            event,
            abandoned=error is not None,
            response=payload.get(EventPayload.RESPONSE) or payload.get(EventPayload.COMPLETION),
        )

    def start_trace(self, trace_id: str | None = None) -> None:
        """Nothing to do: budgets are entered by ``with``, not by traces."""

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        """Nothing to do."""

    # ---------------------------------------------------------------- LLM events of other LLMs
    def _start_llm(self, payload: Mapping[Any, Any], event_id: str) -> None:
        serialized = payload.get(EventPayload.SERIALIZED) or {}
        traces = tuple(global_stack_trace_ids.get())
        outer = _open_llm_event.get()
        if (
            event_id in _counted_events  # a second handler in the same callback manager
            or (outer is not None and outer.open and (outer.encloses(traces) or outer.reading()))
            or serialized.get("class_name") in COUNTED_BY_ADAPTER
            or call_in_progress.get()
        ):
            return
        target = _charge_target(self.budget)
        if target is None:
            return
        model = serialized.get("model_name")
        model = model if isinstance(model, str) and model else None
        num_output = serialized.get("num_output")
        max_tokens = num_output if isinstance(num_output, int) and num_output > 0 else None
        messages = payload.get(EventPayload.MESSAGES)
        if messages is not None:
            chat = _as_dicts(messages)
            high, fair = prompt_tokens_high(chat), prompt_tokens_fair(chat)
        else:
            prompt = str(payload.get(EventPayload.PROMPT) or "")
            high, fair = _text_tokens_high(prompt), text_tokens_fair(prompt)
        ask = (model, high, max_tokens, DEFAULT_MAX_TOKENS_CEILING, None)
        call = CallAccounting(ask, prompt_fair=fair, source=SOURCE, streamed=False, model_label=model)
        call.begin(target.reserve_call(ask))
        event = _Event(event_id, call, traces, active_span_id.get())
        # Never reset: the event closes itself when it ends (a stream's end runs in another frame).
        _open_llm_event.set(event)
        _counted_events[event_id] = event
        if event.span_id is not None:
            # Two open events in one span (an LLM method with no span of its own, called twice inside one
            # traced method): neither one's chunks can be told apart, so neither is tracked by span.
            _events_by_span[event.span_id] = None if event.span_id in _events_by_span else event
        # The LLM may itself call InferenceClient: the adapter then counts that call and reports it here.
        event.previous = _live(call_observer.get())
        call_observer.set(event)


#: ``source`` of the call records this handler writes (the adapter writes its own).
SOURCE = "llamaindex.llm_event"


class _Event:
    """An LLM event this handler counts: its call, where it started, and whether the adapter took it over.

    It is also the ``call_observer`` of the context it started in: the Hugging Face adapter reports each call
    it counts to it. A call made by the LLM for this event (inside its method, or while its stream is being
    read) is the adapter's to charge: the handler gives back its own reservation and charges nothing. Other
    calls are passed on to the observer that was there before.
    """

    __slots__ = (
        "adapter",
        "call",
        "chunks",
        "event_id",
        "latest",
        "open",
        "previous",
        "returned",
        "span_id",
        "stream",
        "traces",
    )

    def __init__(
        self, event_id: str, call: CallAccounting, traces: tuple[str, ...], span_id: str | None
    ) -> None:
        self.event_id = event_id
        self.call = call
        self.traces = traces
        self.span_id = span_id
        self.open = True
        self.adapter = False  # the adapter counted a call made for this event
        self.returned = False  # the LLM method that started the event has returned (its span exited)
        self.stream: weakref.ref[Any] | None = None  # the generator it returned, when it streams
        self.latest: Any = None  # the last response its stream handed to the reader
        self.chunks = 0  # stream chunks with text handed to the reader
        self.previous: Callable[[CallAccounting], None] | None = None

    def encloses(self, traces: tuple[str, ...]) -> bool:
        """Whether an event started under these traces runs inside this event's LLM method."""
        return len(traces) > len(self.traces) and traces[: len(self.traces)] == self.traces

    def reading(self) -> bool:
        """Whether the stream this event's LLM method returned is running now (its reader is in it).

        What runs then runs for this event: ``CustomLLM.astream_chat`` calls ``stream_complete`` from its
        stream, an LLM may send its request from its stream's first step.
        """
        stream = self.stream() if self.stream is not None else None
        return stream is not None and bool(
            getattr(stream, "gi_running", False) or getattr(stream, "ag_running", False)
        )

    def _covers_now(self) -> bool:
        """Whether code running now runs for this event: inside its LLM method, or reading its stream."""
        if self.reading():
            return True
        if self.returned:
            return False
        traces = tuple(global_stack_trace_ids.get())
        return traces[: len(self.traces)] == self.traces

    def __call__(self, call: CallAccounting) -> None:
        if self.open and call.source != SOURCE and self._covers_now():
            if not self.adapter:
                self.adapter = True
                self.call.fail()  # the adapter reserved for the call itself: give back the handler's hold
            return
        if self.previous is not None:
            self.previous(call)

    def before_reserve(self) -> Budget | None:
        """The adapter is about to reserve a call: if it is this event's, give back the handler's hold first
        (``shekel._call.before_reserve``), so the two never overlap, and have the adapter charge the budget
        the handler held on (a bound handler's budget, whatever budget is active around the call)."""
        if self.open and self._covers_now():
            if not self.adapter:
                self.adapter = True
                self.call.fail()
            return self.call.reservation.chain[0]
        hand_back = getattr(self.previous, "before_reserve", None)
        if hand_back is not None:
            target: Budget | None = hand_back()
            return target
        return None


def _live(observer: Callable[[CallAccounting], None] | None) -> Callable[[CallAccounting], None] | None:
    """``observer``, or the first one below it that is still listening (events that ended drop out)."""
    while isinstance(observer, _Event) and not observer.open:
        observer = observer.previous
    return observer


def _stop_observing(event: _Event) -> None:
    if call_observer.get() is event:
        call_observer.set(_live(event.previous))


def _end(event: _Event, *, failed: bool = False, abandoned: bool = False, response: Any = None) -> None:
    """Settle (or release) the handler's call for an event that ended, whichever way it ended. Once."""
    if not event.open:
        return
    event.open = False
    if _events_by_span.get(event.span_id or "") is event:
        _events_by_span.pop(event.span_id or "", None)
    _stop_observing(event)
    if event.adapter:
        return  # the adapter charged the call made for this event
    call = event.call
    if failed:
        call.fail()
        return
    if response is not None:
        call.saw_usage(_reported_usage(response))
    else:
        response = event.latest  # the last chunk handed to the reader
    if response is not None:
        call.saw_output(_response_text(response))
        call.output_chunks = max(call.output_chunks, event.chunks)
        call.streamed = event.chunks > 0 or getattr(response, "delta", None) is not None
    elif abandoned:
        # Abandoned, with none of its chunks seen (its LLM method has no instrumentation span of its own, so
        # they could not be told from other streams'): charge the reserved output, marked as an estimate.
        call.saw_output_tokens(call.reservation.max_tokens or 0)
        call.streamed = True
    call.finish()


def _stream_collected(event: _Event) -> None:
    """A stream was garbage-collected. Never read: nothing was asked of the LLM, release. Read part-way
    (its end event comes after this): charge what it delivered."""
    if not event.open:
        return
    _counted_events.pop(event.event_id, None)
    if event.latest is None:
        _end(event, failed=True)
    else:
        _end(event)


# LlamaIndex's LLM events are leaf events (no parent links between them), so an event nested in another
# (CustomLLM.chat calling its complete) is recognised by the trace stack: each LLM method call pushes a
# trace while it runs, so an event started below an open counted event's traces, in the same context, is
# part of that call. A later call in that context (beside a stream still being read) is not below them.
_open_llm_event: ContextVar[_Event | None] = ContextVar("shekel_llamaindex_llm_event", default=None)

#: LLM events being counted, by event id, shared by every handler so that each event is counted once.
_counted_events: dict[str, _Event] = {}

#: The same events by the instrumentation span they started in (LlamaIndex's span of the LLM method).
_events_by_span: dict[str, _Event | None] = {}


class _SpanWatcher(NullSpanHandler):
    """Sees each LLM method return (its instrumentation span exits), with the stream it returned."""

    @classmethod
    def class_name(cls) -> str:
        return "ShekelSpanWatcher"

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            event = _events_by_span[id_]
        except KeyError:
            return
        if event is None:
            _events_by_span.pop(id_, None)
            return
        event.returned = True
        if event.open and (inspect.isgenerator(result) or inspect.isasyncgen(result)):
            event.stream = weakref.ref(result)
            # A stream dropped before it is read never sends its end event: settle it when it is collected.
            weakref.finalize(result, _stream_collected, event).atexit = False


class _ChunkWatcher(BaseEventHandler):
    """Sees each chunk a stream hands to its reader (``LLM*InProgressEvent``), so that a stream abandoned
    part-way (whose end event carries no response) is charged for what it delivered."""

    @classmethod
    def class_name(cls) -> str:
        return "ShekelChunkWatcher"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if (
            event.__class__ is not LLMCompletionInProgressEvent
            and event.__class__ is not LLMChatInProgressEvent
        ):
            return
        counted = _events_by_span.get(event.span_id or "")
        if counted is None or not counted.open:
            return
        response = event.response
        counted.latest = response
        if getattr(response, "delta", None):
            counted.chunks += 1
        counted.call.saw_usage(_reported_usage(response))


_watching = False


def _watch_llm_methods() -> None:
    """Add the span watcher to LlamaIndex's root dispatcher, once."""
    global _watching
    with _install_lock:
        if not _watching:
            root_dispatcher.add_span_handler(_SpanWatcher())
            root_dispatcher.add_event_handler(_ChunkWatcher())
            _watching = True


# -------------------------------------------------------------------- which budget, and may it start
def _within(budget: Budget, ancestor: Budget) -> bool:
    node: Budget | None = budget
    while node is not None:
        if node is ancestor:
            return True
        node = node.parent
    return False


def _activate(bound: Budget | None) -> AbstractContextManager[object]:
    """Make ``bound`` the active budget, unless it already is or a budget nested in it is."""
    active = current_budget()
    if bound is None or (active is not None and _within(active, bound)):
        return nullcontext()
    return activated(bound)


def _charge_target(bound: Budget | None) -> Budget | None:
    with _activate(bound):
        return current_budget()


def _refuse_if_spent(target: Budget, text: str) -> None:
    """Raise ``BudgetExceededError`` when no call with this text as its prompt could be paid for.

    The core's own rule decides (``Budget.check``): calls made and calls in flight against
    ``max_llm_calls``, tokens against ``max_total_tokens``, and money, for one output token. The model of
    the next call is not known yet: each call checks its own price when it is made.
    """
    target.check(model=None, prompt_tokens=_text_tokens_high(text), max_tokens=1)


def _query_text(payload: Mapping[Any, Any]) -> str:
    query = payload.get(EventPayload.QUERY_STR)
    if query is None:
        return ""
    return str(getattr(query, "query_str", query))


def _as_dicts(messages: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"role": str(getattr(m, "role", "user")), "content": getattr(m, "content", None) or ""}
        for m in messages
    ]


def _reported_usage(response: Any) -> Usage | None:
    """Usage from a LlamaIndex response: ``raw.usage`` (OpenAI or Anthropic names) or ``additional_kwargs``."""
    raw = getattr(response, "raw", None)
    usage = read_usage(raw)
    if usage is not None:
        return usage
    block = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    if block is not None:
        get = block.get if isinstance(block, Mapping) else functools.partial(getattr, block)
        usage = read_usage(
            {
                "usage": {
                    "prompt_tokens": get("input_tokens", None),
                    "completion_tokens": get("output_tokens", None),
                }
            }
        )
        if usage is not None:
            return usage
    return read_usage({"usage": getattr(response, "additional_kwargs", None) or {}})


def _response_text(response: Any) -> str | None:
    message = getattr(response, "message", None)
    text = getattr(message, "content", None) if message is not None else getattr(response, "text", None)
    return text if isinstance(text, str) else None


# -------------------------------------------------------------------- binding HuggingFaceInferenceAPI calls
_originals: dict[tuple[type, str], Any] = {}
_install_lock = threading.Lock()


def _bound_budget(llm: Any) -> Budget | None:
    manager = getattr(llm, "callback_manager", None)
    for handler in getattr(manager, "handlers", None) or ():
        if isinstance(handler, BudgetCallbackHandler) and handler.budget is not None:
            return handler.budget
    return None


def _steps(stream: Iterator[Any], bound: Budget) -> Iterator[Any]:
    # The request is sent on the first step, and each step runs in the reader's context: activate per step.
    try:
        while True:
            with _activate(bound):
                try:
                    item = next(stream)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


async def _asteps(stream: AsyncIterator[Any], bound: Budget) -> AsyncIterator[Any]:
    try:
        while True:
            with _activate(bound):
                try:
                    item = await stream.__anext__()
                except StopAsyncIteration:
                    return
            yield item
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _bind_call(original: Callable[..., Any]) -> Callable[..., Any]:
    def bound_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = _bound_budget(self)
        if bound is None:
            return original(self, *args, **kwargs)
        with _activate(bound):
            return original(self, *args, **kwargs)

    return bound_call


def _bind_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    def bound_stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = _bound_budget(self)
        if bound is None:
            return original(self, *args, **kwargs)
        with _activate(bound):
            stream = original(self, *args, **kwargs)
        return _steps(stream, bound)

    return bound_stream


def _bind_acall(original: Callable[..., Any]) -> Callable[..., Any]:
    async def bound_acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = _bound_budget(self)
        if bound is None:
            return await original(self, *args, **kwargs)
        with _activate(bound):
            return await original(self, *args, **kwargs)

    return bound_acall


def _bind_astream(original: Callable[..., Any]) -> Callable[..., Any]:
    async def bound_astream(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = _bound_budget(self)
        if bound is None:
            return await original(self, *args, **kwargs)
        with _activate(bound):
            stream = await original(self, *args, **kwargs)
        return _asteps(stream, bound)

    return bound_astream


_BINDERS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "chat": _bind_call,
    "complete": _bind_call,
    "stream_chat": _bind_stream,
    "stream_complete": _bind_stream,
    "achat": _bind_acall,
    "acomplete": _bind_acall,
    "astream_chat": _bind_astream,
    "astream_complete": _bind_astream,
}


def install() -> bool:
    """Let bound handlers bind ``HuggingFaceInferenceAPI`` calls. Idempotent; False without that package.

    Each call looks for a :class:`BudgetCallbackHandler` bound to a budget on the LLM's callback manager;
    with none, the original method runs and nothing else happens. Creating a bound handler installs this.
    """
    try:
        from llama_index.llms.huggingface_api import HuggingFaceInferenceAPI  # type: ignore[import-untyped]
    except ImportError:
        return False
    cls: type = HuggingFaceInferenceAPI
    with _install_lock:
        for name, bind in _BINDERS.items():
            current = cls.__dict__.get(name)
            if current is None or (cls, name) in _originals or hasattr(current, "__shekel_original__"):
                continue
            wrapper = functools.wraps(current)(bind(current))
            wrapper.__shekel_original__ = current  # type: ignore[attr-defined]
            _originals[(cls, name)] = current
            setattr(cls, name, wrapper)
    return True


def uninstall() -> None:
    """Put back the exact original ``HuggingFaceInferenceAPI`` methods where our wrapper is on top. Idempotent."""
    with _install_lock:
        for (cls, name), original in list(_originals.items()):
            if getattr(cls.__dict__.get(name), "__shekel_original__", None) is original:
                setattr(cls, name, original)
                del _originals[(cls, name)]
