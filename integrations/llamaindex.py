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
  counting a call (``call_in_progress``).
* Any other LlamaIndex LLM is counted here, from its LLM callback events, by the first
  ``BudgetCallbackHandler`` of its manager that has a budget to charge (``_counted_events``): reserved when the
  event starts (a refusal raises ``BudgetExceededError`` out of ``on_event_start``, which LlamaIndex
  propagates, so the request is never sent), settled at the usage its response reports when the event ends,
  released when it failed. A stream abandoned part-way ends with no response: it is charged for the chunks it
  handed to its reader, seen through LlamaIndex's instrumentation (``_ChunkWatcher``). A stream dropped
  before it is read sends no end event: it is released when it is garbage-collected (``_SpanWatcher`` sees
  the stream its LLM method returns). An LLM event inside another LLM event (a ``CustomLLM``'s ``chat``
  calling its ``complete``) is the same call and is not counted again (see ``_open_llm_event``).
* An LLM of another package that calls ``InferenceClient`` itself emits LLM events the handler counts, and
  HTTP calls the adapter counts. The handler listens for the adapter's calls (``shekel._call.call_observer``)
  while the LLM method runs and while its stream is read: when the adapter counts a call for the event, the
  handler gives back its reservation and leaves the charge to the adapter.

A handler bound to a budget counts nothing more: it only decides *which* budget the layer that counts a call
charges, by making its budget the active one (``_activate``, never ``with``) where the call runs:

* around each call of an LLM whose manager holds it (``HuggingFaceInferenceAPI`` emits no LLM events to
  hook: a patch of its eight call methods does it, and carries the budget into the streams they return);
* from the start to the end of each event (``_SCOPE_EVENTS``: query, retrieval, synthesis, ...) and of each
  outermost trace (a chat engine's ``chat``) that its manager sees: a *scope*. The LLM calls made inside are
  charged to it whatever manager the LLM has. A streaming response whose generator calls the LLM when it is
  read, after the event ended, is read inside the budget too (``_carry_into_stream``).

LlamaIndex gives an LLM the manager of the index or engine built around it (``resolve_llm``, the response
synthesizers), dropping the LLM's own: a patch of ``BaseLLM.__setattr__`` keeps the LLM's
BudgetCallbackHandlers in front of the new manager's (in a copy of it) when LlamaIndex's code does that. Where
a form cannot work it says so: an LLM called inside a scope whose LLM events no handler sees is named in a
warning when the scope ends, and a bound handler that is discarded without ever being called (a chat
engine's ``from_defaults`` ignores ``callback_manager=``) warns as it goes.

The handler also refuses to start a query, an agent step or a sub-question when its budget cannot pay
even for the smallest call, before retrieval or embedding runs.
"""

from __future__ import annotations

import copy
import functools
import inspect
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from typing import Any

try:
    from llama_index.core.base.llms.base import BaseLLM
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
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

from shekel import _context
from shekel._budget import DEFAULT_MAX_TOKENS_CEILING, Budget
from shekel._call import CallAccounting, call_in_progress, call_observer
from shekel._context import activated, current_budget
from shekel._patching import ensure_installed
from shekel._usage import Usage, prompt_tokens_fair, prompt_tokens_high, read_usage, text_tokens_fair
from shekel._usage import text_tokens_high as _text_tokens_high
from shekel._warn import warn_user
from shekel.errors import BudgetExceededError

__all__ = ["COUNTED_BY_ADAPTER", "BudgetCallbackHandler", "install", "uninstall"]

#: LLM classes (their ``class_name()``) whose calls the Hugging Face adapter counts, never this handler.
COUNTED_BY_ADAPTER = frozenset({"HuggingFaceInferenceAPI"})

#: Events that start work which leads to LLM calls: refused up front when the budget has nothing left.
_GATED_EVENTS = frozenset({CBEventType.QUERY, CBEventType.AGENT_STEP, CBEventType.SUB_QUESTION})

#: Events around work that may call an LLM. A bound handler makes its budget the active one from the start of
#: each to its end (a scope), so that the LLM calls made inside are charged to it whichever manager the LLM
#: has. LlamaIndex opens and closes all of them with ``CallbackManager.event``, so each start has its end.
_SCOPE_EVENTS = frozenset(
    {
        CBEventType.QUERY,
        CBEventType.RETRIEVE,
        CBEventType.SYNTHESIZE,
        CBEventType.TREE,
        CBEventType.SUB_QUESTION,
        CBEventType.FUNCTION_CALL,
        CBEventType.RERANKING,
        CBEventType.AGENT_STEP,
    }
)


class BudgetCallbackHandler(BaseCallbackHandler):
    """Puts LlamaIndex queries, chats and agent steps under a shekel budget.

    Args:
        budget: The budget to charge. Without it, each call is charged to the budget active where it runs
            (the innermost ``with budget(...)``), and nothing is counted outside a budget. With it, calls
            are charged to ``budget`` even outside any ``with`` block; inside a budget nested in ``budget``
            they go to that inner budget (which passes them on to ``budget``). Inside an unrelated budget
            they go to ``budget`` (and its own parents) only: a bound budget is never attached to whichever
            budget happens to be active, so one service-wide budget can serve many request budgets.

    Add it to ``Settings.callback_manager``, to the ``callback_manager`` of an engine, or to the
    ``callback_manager`` of an LLM (LlamaIndex may give the LLM another manager when it builds an engine
    around it: the handler stays with the LLM). A bound handler charges its budget for everything a query,
    a chat or a retrieval it sees does, from the start of its event to its end, streams read afterwards
    included. ``HuggingFaceInferenceAPI`` calls are counted by shekel's Hugging Face adapter; LLMs that
    report usage through LlamaIndex LLM events are counted by this handler at the budget's prices.
    """

    def __init__(self, budget: Budget | None = None) -> None:
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(
                f"BudgetCallbackHandler(budget=...) takes a shekel budget (shekel.budget(...)), got {budget!r}."
            )
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.budget = budget
        self._use = _Use()
        _watch_llm_methods()
        if budget is not None:
            install()
            # A handler whose callback manager LlamaIndex drops (a chat engine's from_defaults ignores its
            # callback_manager=) is never called: say so when it goes, rather than have charged nothing quietly.
            weakref.finalize(self, _warn_if_never_called, self._use, budget.path).atexit = False

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
        """Refuse work the budget cannot pay for; reserve the cost of an LLM event this handler counts; make
        a bound handler's budget the active one until the event ends."""
        self._use.called = True
        if event_type is CBEventType.LLM:
            self._start_llm(payload or {}, event_id)
            return event_id
        if event_type in _GATED_EVENTS:
            target = _charge_target(self.budget)
            if target is not None:
                try:
                    _refuse_if_spent(target, _query_text(payload or {}))
                except BudgetExceededError:
                    # The event never starts, so it never ends: close what other handlers opened for it.
                    with _scope_lock:
                        opened = _event_scopes.pop(event_id, [])
                    for scope in opened:
                        _close_scope(scope)
                    raise
        if self.budget is not None and event_type in _SCOPE_EVENTS:
            scope = _open_scope(self, self.budget)
            with _scope_lock:
                _event_scopes.setdefault(event_id, []).append(scope)
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        """Settle an LLM event at its reported (or estimated) usage, or release it when it failed; end the
        scope a bound handler opened for another event."""
        if event_type is not CBEventType.LLM:
            if self.budget is not None and event_type in _SCOPE_EVENTS:
                # A streaming response makes its LLM call when it is read, after the event ended.
                _carry_into_stream((payload or {}).get(EventPayload.RESPONSE), self.budget)
                _close_scope_of(self, event_id)
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
        """A bound handler makes its budget the active one for the trace (a whole query or chat call).

        LlamaIndex calls this for the outermost trace only, with the manager of the object called: a chat
        engine emits no event of its own, its ``chat`` is one trace.
        """
        self._use.called = True
        if self.budget is not None:
            _open_scope(self, self.budget, trace=True)

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        """End the trace's scope."""
        if self.budget is None:
            return
        for scope in reversed(_scopes.get()):
            if scope.trace and scope.handler is self and not scope.closed:
                _close_scope(scope)
                return

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
    """Sees each LLM method return (its instrumentation span exits), with the stream it returned; and each
    LLM method called inside a scope by an LLM whose LLM events no BudgetCallbackHandler sees."""

    @classmethod
    def class_name(cls) -> str:
        return "ShekelSpanWatcher"

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        scopes = _scopes.get()
        if not scopes or not isinstance(instance, BaseLLM):
            return
        # The span's id is "<class>.<method>-<uuid>".
        if id_.partition("-")[0].rpartition(".")[2] not in _BINDERS:
            return
        if instance.class_name() in COUNTED_BY_ADAPTER:
            return
        handlers = getattr(instance.callback_manager, "handlers", None) or ()
        if not any(isinstance(handler, BudgetCallbackHandler) for handler in handlers):
            # Instrumentation handlers cannot raise (LlamaIndex swallows it): the scope warns when it ends.
            scopes[-1].unseen.add(type(instance).__name__)

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


# -------------------------------------------------------------------- scopes: a bound budget for an event
class _Use:
    """What a handler has been through, kept apart from it so that its finaliser can read it."""

    __slots__ = ("called", "warned")

    def __init__(self) -> None:
        self.called = False  # LlamaIndex called it, or a patched LLM method found it on its manager
        self.warned: set[str] = set()  # LLM classes it warned about (see _Scope.unseen)


def _warn_if_never_called(use: _Use, path: str) -> None:
    if not use.called:
        warn_user(
            f"shekel: a BudgetCallbackHandler bound to budget {path!r} was discarded without LlamaIndex ever "
            "calling it, so it charged nothing: the callback manager it was given was dropped (the chat "
            "engines' from_defaults, SimpleChatEngine.from_defaults included, ignore callback_manager=). "
            "Give it to the LLM (callback_manager=CallbackManager([handler])), to Settings.callback_manager "
            "before the engine is built, or set engine.callback_manager after building the engine."
        )


class _Scope:
    """A bound handler's budget made the active one for an event or a trace it saw.

    ``frame`` is None when nothing had to be made active (the budget, or a budget nested in it, already was).
    ``unseen`` holds the LLM classes called inside whose LLM events no BudgetCallbackHandler sees.
    """

    __slots__ = ("budget", "closed", "covered", "frame", "handler", "token", "trace", "unseen")

    def __init__(self, handler: BudgetCallbackHandler, budget: Budget, trace: bool) -> None:
        self.handler = handler
        self.budget = budget
        self.trace = trace
        self.closed = False
        self.frame: _context._Frame | None = None
        self.covered: _context._Frame | None = None
        self.token: Token[tuple[_Scope, ...]] | None = None
        self.unseen: set[str] = set()


#: The scopes open in this context, innermost last. A stream returned inside one is read later, outside it:
#: the patched ``HuggingFaceInferenceAPI`` stream methods carry the innermost scope's budget into the stream.
_scopes: ContextVar[tuple[_Scope, ...]] = ContextVar("shekel_llamaindex_scopes", default=())

#: Scopes opened for events, by event id: an event ends by its id.
_event_scopes: dict[str, list[_Scope]] = {}
_scope_lock = threading.Lock()


def _open_scope(handler: BudgetCallbackHandler, budget: Budget, *, trace: bool = False) -> _Scope:
    scope = _Scope(handler, budget, trace)
    active = current_budget()
    if active is None or not _within(active, budget):
        ensure_installed()
        scope.covered = _context._active.get()
        scope.frame = _context.push(budget)
    scope.token = _scopes.set((*_scopes.get(), scope))
    return scope


def _close_scope_of(handler: BudgetCallbackHandler, event_id: str) -> None:
    with _scope_lock:
        scopes = _event_scopes.get(event_id, [])
        mine = next((scope for scope in scopes if scope.handler is handler), None)
        if mine is not None:
            scopes.remove(mine)
            if not scopes:
                del _event_scopes[event_id]
    if mine is not None:
        _close_scope(mine)


def _close_scope(scope: _Scope) -> None:
    """End a scope, and in this context every scope opened after it whose end never came (an event whose
    start another handler refused). Warns about unseen LLMs last: a warning turned error leaves nothing open."""
    if scope.closed:
        return
    stack = _scopes.get()
    if scope not in stack:  # ended in another context than it started in
        ended: tuple[_Scope, ...] = (scope,)
    else:
        position = stack.index(scope)
        ended = stack[position:]
        assert scope.token is not None
        try:
            _scopes.reset(scope.token)
        except ValueError:  # opened in the context this one was copied from
            _scopes.set(stack[:position])
    for inner in reversed(ended):
        _undo(inner)
    for inner in ended:
        _warn_unseen(inner)


def _undo(scope: _Scope) -> None:
    scope.closed = True
    frame, scope.frame = scope.frame, None
    if frame is None:
        return
    if _context._active.get() is frame and frame.token is not None:
        try:
            _context._active.reset(frame.token)
            return
        except ValueError:  # pushed in the context this one was copied from
            pass
    # The frame cannot be taken off here: it becomes a stand-in for the one it covered (the same neutralising
    # the LangChain handler does for runs LangChain ends in a copy of their context).
    covered = scope.covered
    frame.budget = covered.budget if covered is not None else None
    frame.token = covered.token if covered is not None else None


def _carry_into_stream(response: Any, budget: Budget) -> None:
    """Have a streaming response's generator read inside ``budget``: LlamaIndex's streaming synthesizers call
    the LLM from it, when the caller reads it, after the query's events have ended."""
    stream = getattr(response, "response_gen", None)
    if inspect.isgenerator(stream) and stream.gi_code is not _steps.__code__:
        response.response_gen = _steps(stream, budget)
    elif inspect.isasyncgen(stream) and stream.ag_code is not _asteps.__code__:
        response.response_gen = _asteps(stream, budget)


def _scope_budget() -> Budget | None:
    """The budget of the innermost scope open here, or None."""
    scopes = _scopes.get()
    return scopes[-1].budget if scopes else None


def _warn_unseen(scope: _Scope) -> None:
    use = scope.handler._use
    names = sorted(scope.unseen - use.warned)
    if not names:
        return
    use.warned.update(names)
    warn_user(
        f"shekel: BudgetCallbackHandler(budget={scope.budget.name!r}) saw {', '.join(names)} called for its "
        "query, but that LLM's callback manager holds no BudgetCallbackHandler: its LLM events are not seen, "
        "so only its calls through huggingface_hub are counted. Add the handler to Settings.callback_manager "
        "before building the LLM and the engine, or pass callback_manager=CallbackManager([handler]) to the "
        "LLM."
    )


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
#: What each patch replaced (``_ABSENT`` for a name the class only inherited) and the wrapper put there.
_patched: dict[tuple[type, str], tuple[Any, Any]] = {}
_install_lock = threading.Lock()


def _bound_budget(llm: Any) -> Budget | None:
    """The budget of the first bound handler on the LLM's manager; else that of the scope this call is
    made in (its stream is read after the scope ended: it is carried there)."""
    manager = getattr(llm, "callback_manager", None)
    for handler in getattr(manager, "handlers", None) or ():
        if isinstance(handler, BudgetCallbackHandler) and handler.budget is not None:
            handler._use.called = True
            return handler.budget
    return _scope_budget()


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


# -------------------------------------------------------------------- an LLM keeps its budget handlers
def _keep_budget_handlers(original: Callable[..., None]) -> Callable[..., None]:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if name == "callback_manager" and isinstance(value, CallbackManager):
            previous = self.__dict__.get("callback_manager")
            if isinstance(previous, CallbackManager) and previous is not value and _set_by_llamaindex():
                value = _with_kept_handlers(previous, value)
        original(self, name, value)

    return __setattr__


def _set_by_llamaindex() -> bool:
    """Whether the assignment being made comes from LlamaIndex's own code (frame 2: the assigning one)."""
    return str(sys._getframe(2).f_globals.get("__name__", "")).startswith("llama_index.")


def _with_kept_handlers(previous: CallbackManager, new: CallbackManager) -> CallbackManager:
    """``new``, or a copy of it with the BudgetCallbackHandlers of ``previous`` in front.

    LlamaIndex gives an LLM the manager of the index or engine built around it (``resolve_llm``, a response
    synthesizer), dropping the one it was built with. The copy keeps them: the LLM's own handlers come first,
    so a handler bound on the LLM owns its calls. ``new`` itself, often ``Settings.callback_manager``, is left
    as it was; the copy shares its trace map, so other handlers' traces still see the LLM's events.
    """
    kept = [h for h in previous.handlers if isinstance(h, BudgetCallbackHandler) and h not in new.handlers]
    if not kept:
        return new
    manager = copy.copy(new)
    manager.handlers = [*kept, *new.handlers]
    return manager


# -------------------------------------------------------------------- install
_ABSENT: Any = object()  # what a class had under a name it only inherited


def _patch(cls: type, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    if (cls, name) in _patched:
        return
    current = cls.__dict__.get(name, _ABSENT)
    target = getattr(cls, name) if current is _ABSENT else current
    wrapper = functools.wraps(target)(wrap(target))
    wrapper.__shekel_original__ = current  # type: ignore[attr-defined]
    _patched[(cls, name)] = (current, wrapper)
    setattr(cls, name, wrapper)


def install() -> bool:
    """Let bound handlers bind ``HuggingFaceInferenceAPI`` calls, and LLMs keep their budget handlers when
    LlamaIndex gives them another callback manager. Idempotent; False without ``HuggingFaceInferenceAPI``.

    Each ``HuggingFaceInferenceAPI`` call looks for a :class:`BudgetCallbackHandler` bound to a budget on the
    LLM's callback manager, then for a bound handler's scope; with neither, the original method runs and
    nothing else happens. Creating a bound handler installs this.
    """
    with _install_lock:
        _patch(BaseLLM, "__setattr__", _keep_budget_handlers)
    try:
        from llama_index.llms.huggingface_api import HuggingFaceInferenceAPI  # type: ignore[import-untyped]
    except ImportError:
        return False
    cls: type = HuggingFaceInferenceAPI
    with _install_lock:
        for name, bind in _BINDERS.items():
            if name in cls.__dict__:
                _patch(cls, name, bind)
    return True


def uninstall() -> None:
    """Put back exactly what was there, where our own wrapper (by identity) is still the one in place: one
    another library put on top of ours is left alone, and ours stays recorded under it. Idempotent."""
    with _install_lock:
        for (cls, name), (original, wrapper) in list(_patched.items()):
            if cls.__dict__.get(name) is wrapper:
                if original is _ABSENT:
                    delattr(cls, name)
                else:
                    setattr(cls, name, original)
                del _patched[(cls, name)]
