"""Budgets for LangChain: :class:`BudgetCallbackHandler`, for ``ChatHuggingFace`` and ``HuggingFaceEndpoint``.

    from shekel import budget
    from shekel.integrations.langchain import BudgetCallbackHandler

    with budget(max_usd=0.50, price_per_1k_tokens={"input": 0.5, "output": 1.5}):
        chain.invoke({"topic": "tides"})  # picked up automatically: no callbacks=[...] needed

    chain.invoke({"topic": "tides"}, config={"callbacks": [BudgetCallbackHandler(budget=tenant_budget)]})

Count-once rule. Every Hugging Face, OpenAI SDK or Anthropic SDK call made by a LangChain run is charged by
exactly one layer:

* The adapter (Hugging Face, OpenAI or Anthropic: ``ChatHuggingFace``, ``HuggingFaceEndpoint``,
  ``ChatOpenAI``, ``ChatAnthropic``) owns every call it sees. It reserves the worst case before the request and
  raises ``BudgetExceededError`` from inside the model (LangChain lets it out of ``invoke``), asks the server
  for usage (``stream_options``, ``details``), sets ``max_tokens``, switches to a fallback model, settles.
* This handler owns the *run*. When a run starts it picks the budget (the one it is bound to, else the one
  active at that moment) and makes it the active one for the run, so that the adapter charges it in
  whatever thread or task LangChain makes the call. The adapter reports each call it counts under the run
  (``shekel._call.call_observer``). A stream runs in the caller's context and hands it each chunk, so there
  the budget is active only until the request is made: the first streamed token gives the context back.
* Where the adapter will not see the call (it is uninstalled, the model does not call Hugging Face through
  ``huggingface_hub``, or LangChain starts the run where the handler cannot reach the request), the handler
  checks before the run that the budget can pay for a call of the model's ``max_tokens`` and raises
  ``BudgetExceededError`` if not (``raise_error`` is set, so LangChain does not swallow it). A run that ends
  with no call reported is charged by the handler, at the usage LangChain returns or an estimate marked as
  such. While a run streams, the handler cuts it off with ``BudgetExceededError`` once one more token would
  pass the cap.
* Several handlers may see one run (one in the run's ``config`` and one given to the model, or one per chain
  level): the first to see the run owns it, the others stand aside.

Inside ``with budget(...)`` LangChain adds a handler by itself (a configure hook registered when this module
is imported) to each run that carries no ``BudgetCallbackHandler`` of its own. It is not inherited by child
runs, so a handler given to a model (``callbacks=[...]``, ``with_config``) owns the model's runs in chains and
LangGraph graphs too.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from contextvars import ContextVar, Token
from decimal import Decimal
from typing import Any
from uuid import UUID

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult
    from langchain_core.tracers.context import register_configure_hook
    from langchain_huggingface import ChatHuggingFace  # noqa: F401  # the extra must be installed
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "shekel.integrations.langchain needs langchain-core and langchain-huggingface: "
        'pip install "shekel[langchain]"'
    ) from exc

from shekel import _context, _patching
from shekel._budget import OUTPUT_MARGIN_TOKENS, Budget, Reservation
from shekel._call import CallAccounting, call_observer
from shekel._context import current_budget
from shekel._money import exact_money
from shekel._patching import ensure_installed
from shekel._redact import redact_model
from shekel._usage import Usage, prompt_tokens_estimates, text_tokens_fair, text_tokens_high
from shekel._warn import warn_user
from shekel.errors import BudgetExceededError

__all__ = ["BudgetCallbackHandler"]

#: ``source`` of the call records the handler writes itself (the adapter writes its own).
SOURCE = "langchain"


class _Run:
    """One LLM run owned by a handler: its budget, what it streamed, and the call the adapter counted."""

    __slots__ = (
        "budget",
        "call",
        "covered",
        "frame",
        "handed_back",
        "max_tokens",
        "model",
        "observer_token",
        "output_chars",
        "output_chunks",
        "owns_queue",
        "prompt_fair",
        "queue",
        "queue_token",
        "started_in_copy",
        "streamed_usage",
    )

    def __init__(self, budget: Budget, model: str | None, prompt_fair: int, max_tokens: int | None) -> None:
        self.budget = budget
        self.model = model
        self.prompt_fair = prompt_fair
        self.max_tokens = max_tokens
        self.started_in_copy = False
        self.call: CallAccounting | None = None
        self.output_chars = 0
        self.output_chunks = 0
        self.streamed_usage: Usage | None = None
        self.frame: _context._Frame | None = None
        self.covered: _context._Frame | None = None
        self.handed_back = False  # the caller's context was given back at the first streamed token
        self.owns_queue = False
        self.queue: _Waiting | None = None
        self.queue_token: Token[_Waiting | None] | None = None
        self.observer_token: Token[Any] | None = None

    def streamed_tokens(self) -> int:
        """Output tokens streamed so far, unclamped (a server may send more than ``max_tokens``).

        The per-chunk rule of :meth:`CallAccounting.usage`, which charges the run when no usage comes.
        """
        return max(self.output_chunks, -(-self.output_chars // 4))


class _Waiting:
    """Runs started in one context and not yet matched to a call, oldest first.

    ``generate`` with several prompts starts every run before making the calls one by one, in order; the
    adapter reports each call it counts here, and the oldest waiting run takes it.
    """

    __slots__ = ("_lock", "_runs", "closed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: deque[_Run] = deque()
        self.closed = False  # its first run ended: later runs in this context start a queue of their own

    def add(self, run: _Run) -> None:
        with self._lock:
            self._runs.append(run)

    def waiting_besides(self, run: _Run) -> bool:
        """Whether a run other than ``run`` still waits for its call (a start group still making calls)."""
        with self._lock:
            return any(other is not run for other in self._runs)

    def discard(self, run: _Run) -> None:
        with self._lock:
            if run in self._runs:
                self._runs.remove(run)

    def __call__(self, call: CallAccounting) -> None:
        with self._lock:
            run = self._runs.popleft() if self._runs else None
        if run is not None:
            run.call = call


_waiting: ContextVar[_Waiting | None] = ContextVar("shekel_langchain_waiting", default=None)

# Run id -> its owner's state. Module-wide, so that two handlers on one run (automatic and explicit) agree.
_runs: dict[UUID, _Run] = {}
_runs_lock = threading.Lock()


class BudgetCallbackHandler(BaseCallbackHandler):
    """Charges the Hugging Face calls of LangChain runs to a shekel budget, once, and stops runs it cannot pay.

    Args:
        budget: The budget to charge. Without it, each run is charged to the budget active when the run
            starts (the innermost ``with budget(...)``), and runs outside any budget are not counted. With
            it, runs are charged to ``budget`` with no ``with`` block needed: pass the handler in a chain's
            ``config={"callbacks": [...]}`` in a long-lived service. A run made inside a budget nested in
            ``budget`` is charged to that inner budget, which passes it on to ``budget``; inside any other
            budget, it is charged to ``budget`` alone.

    Works for ``ChatHuggingFace`` and ``HuggingFaceEndpoint`` (and any LangChain model whose calls go through
    ``huggingface_hub``), with ``invoke``, ``batch``, ``stream`` and their async twins, alone or in chains.
    A run the budget cannot pay for raises :class:`~shekel.BudgetExceededError` before any request is sent.
    """

    raise_error = True  # LangChain swallows handler errors unless this is set: a cap must stop the chain.
    run_inline = True  # In async runs, run in the event loop's task: the budget is made active right there.
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self, budget: Budget | None = None) -> None:
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(
                "BudgetCallbackHandler(budget=...) takes a shekel budget, e.g. "
                f"BudgetCallbackHandler(budget=shekel.budget(max_usd=1.0)), got {budget!r}."
            )
        super().__init__()
        self.budget = budget
        if budget is not None:
            ensure_installed()

    def __repr__(self) -> str:
        bound = "the active budget" if self.budget is None else repr(self.budget)
        return f"<BudgetCallbackHandler for {bound}>"

    # ------------------------------------------------------------------------------ run start
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Check the budget can pay for the call and make it the active budget for the run."""
        chat = messages[0] if messages else []
        params = invocation_params or {}
        meta = metadata or {}
        prompt_high, prompt_fair = prompt_tokens_estimates(chat, params.get("tools"))
        self._start(
            run_id,
            serialized,
            model=_model_name(params, meta),
            prompt_high=prompt_high,
            prompt_fair=prompt_fair,
            max_tokens=_int_or_none(params.get("max_tokens", meta.get("ls_max_tokens"))),
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """The text-LLM twin of :meth:`on_chat_model_start` (``HuggingFaceEndpoint``)."""
        prompt = prompts[0] if prompts else ""
        params = invocation_params or {}
        meta = metadata or {}
        self._start(
            run_id,
            serialized,
            model=_model_name(params, meta),
            prompt_high=text_tokens_high(prompt),
            prompt_fair=text_tokens_fair(prompt),
            max_tokens=_int_or_none(params.get("max_new_tokens", meta.get("ls_max_tokens"))),
            started_in_copy=_in_event_loop(),
        )

    def _start(
        self,
        run_id: UUID,
        serialized: Mapping[str, Any] | None,
        *,
        model: str | None,
        prompt_high: int,
        prompt_fair: int,
        max_tokens: int | None,
        started_in_copy: bool = False,
    ) -> None:
        active = current_budget()
        budget = self.budget
        if budget is None or (active is not None and budget in active._chain):
            budget = active  # a budget nested in the bound one is charged, and passes it on
        if budget is None:
            return
        run = _Run(budget, model, prompt_fair, max_tokens)
        adapter = _patching._installed and _made_through_huggingface_hub(serialized)
        # LangChain starts async text-LLM runs (``BaseLLM.agenerate``) in tasks of their own, so what this
        # handler makes active there never reaches the request; the adapter counts it for the budget that
        # was active already, if any, and reports nothing here.
        run.started_in_copy = started_in_copy and active is not None and adapter
        with _runs_lock:
            if run_id in _runs:
                return  # another BudgetCallbackHandler owns this run
            _runs[run_id] = run
        queue = _waiting.get()
        # The adapter refuses a call it cannot pay for from inside the model, before the request, priced by
        # its real model id. The handler refuses up front only where the adapter will not see the call:
        # LangChain logs every error a handler raises, so refusing twice would only add noise. In a start
        # group (``generate`` with several prompts) only the first run is checked here: the later ones are
        # checked call by call, as the earlier calls settle.
        if (not adapter or started_in_copy) and (queue is None or not queue._runs):
            try:
                if not adapter:
                    budget.check_price(model)  # on_unknown_price, for a model no adapter prices
                _check(budget, model, prompt_high, max_tokens)
            except BaseException:
                with _runs_lock:
                    del _runs[run_id]
                raise
        _route(run)

    # ------------------------------------------------------------------------------ streaming
    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """Count streamed output and cut the stream off once one more token would pass the cap."""
        run = _runs.get(run_id)
        if run is None:
            return
        try:
            text = token if isinstance(token, str) else (chunk.text if chunk is not None else "")
            usage = _message_usage(getattr(chunk, "message", None))
            if usage is not None:
                run.streamed_usage = usage
            if text:
                run.output_chars += len(text)
                run.output_chunks += 1
                _check_stream(run)
        finally:
            # ``stream`` hands each chunk to the caller right after this, and the caller's code runs in
            # this context until it asks for the next one (or never does): give back what the run's start
            # changed here. The request is made by now; the rest of the stream is charged to the budget
            # it reserved on (or by this handler, to ``run.budget``), whatever is active.
            if not run.handed_back:
                run.handed_back = True
                queue = run.queue
                if queue is None or not queue.waiting_besides(run):
                    _step_out(run)

    # ------------------------------------------------------------------------------ run end
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Charge the run here if no call was counted under it (else the adapter already did)."""
        run = self._finish(run_id)
        if run is not None and run.call is None and not run.started_in_copy:
            usage, text = _result_usage(run, response)
            _settle_here(run, usage, _result_model(response), text=text)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Charge what a stream delivered before it failed, if no call was counted under the run."""
        run = self._finish(run_id)
        if run is None or run.call is not None or run.started_in_copy:
            return
        if run.output_chunks or run.streamed_usage is not None:
            _settle_here(run, run.streamed_usage, None)

    def _finish(self, run_id: UUID) -> _Run | None:
        with _runs_lock:
            run = _runs.pop(run_id, None)
        if run is not None:
            _unroute(run)
        return run


# ---------------------------------------------------------------------------------- routing
def _route(run: _Run) -> None:
    """Make the run's budget active and listen for the calls the adapter counts, in this context."""
    if current_budget() is not run.budget:
        run.covered = _context._active.get()
        run.frame = _context.push(run.budget)
    queue = _waiting.get()
    if queue is None or queue.closed:
        queue = _Waiting()
        run.owns_queue = True
        run.queue_token = _waiting.set(queue)
        run.observer_token = call_observer.set(queue)
    run.queue = queue
    queue.add(run)


def _unroute(run: _Run) -> None:
    queue = run.queue
    if queue is not None:
        queue.discard(run)
        if run.owns_queue:
            queue.closed = True
    _step_out(run)
    frame = run.frame
    if frame is None:
        return
    # LangChain ends async runs in a copy of the context they started in (``@shielded`` callbacks), so the
    # frame pushed at the start cannot be popped there: it becomes a stand-in for the frame it covered.
    covered = run.covered
    frame.budget = covered.budget if covered is not None else None
    frame.token = covered.token if covered is not None else None
    run.frame = None


def _step_out(run: _Run) -> None:
    """Undo what :func:`_route` set in this context, if this is the context it was set in.

    Called once the run's request is made (its first streamed token) and when the run ends. Each part is
    undone once: what cannot be undone here (another context: a task of ``agenerate``, a shielded end) is
    left for the run's end.
    """
    if run.observer_token is not None:
        with suppress(ValueError):  # set in another context
            call_observer.reset(run.observer_token)
            run.observer_token = None
    if run.queue_token is not None:
        with suppress(ValueError):
            _waiting.reset(run.queue_token)
            run.queue_token = None
    frame = run.frame
    if frame is None or frame.token is None or _context._active.get() is not frame:
        return
    try:
        _context._active.reset(frame.token)
    except ValueError:  # pushed in another context
        return
    run.frame = None


# ---------------------------------------------------------------------------------- enforcement
def _check(budget: Budget, model: str | None, prompt_tokens: int, max_tokens: int | None) -> None:
    """Raise ``BudgetExceededError`` now if the budget could not pay for the call. Holds nothing."""
    budget.check(model=model, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


@exact_money  # per token, outside any call of the core: the application's decimal context is in force here
def _check_stream(run: _Run) -> None:
    call = run.call
    reservation: Reservation | None = call.reservation if call is not None else None
    owner = reservation.chain[0] if reservation is not None else run.budget
    price = reservation.price if reservation is not None else run.budget.price_for(run.model)
    if price is None:
        return
    allowed = None if reservation is None else reservation.max_tokens
    streamed = run.streamed_tokens()
    if allowed is not None and streamed < allowed + OUTPUT_MARGIN_TOKENS:
        return  # still inside what was reserved for the call
    tightest = owner.room()
    if tightest is None:
        return
    budget, room = tightest
    held = reservation.cost if reservation is not None else Decimal(0)
    next_cost = price.cost(run.prompt_fair, streamed + 1)
    if next_cost > held + room:
        raise BudgetExceededError(
            budget_name=budget.path,
            spent=budget.spent_exact,
            limit=budget.limit_exact,
            model=run.model if reservation is None else reservation.model,
            needed=next_cost,
        )


# ---------------------------------------------------------------------------------- charging here
@exact_money
def _settle_here(run: _Run, usage: Usage | None, label: str | None, *, text: str = "") -> None:
    """Charge a run no lower layer counted. The request was made, so this is recorded even past the cap.

    Through the core's accounting of one call: at ``usage`` when LangChain returned it, else an estimate from
    the prompt and the output received (streamed, or ``text``), at most the run's ``max_tokens``, marked.
    """
    budget = run.budget
    call = CallAccounting(
        (run.model, 0, run.max_tokens, 0, None),
        prompt_fair=run.prompt_fair,
        source=SOURCE,
        streamed=bool(run.output_chunks),
        model_label=label,
    )
    observer = call_observer.set(None)  # the handler's own charge: not a call made below a run
    try:
        call.begin(budget.unreserved(model=run.model, max_tokens=run.max_tokens))
    finally:
        call_observer.reset(observer)
    call.output_chunks = run.output_chunks
    call.output_chars = max(run.output_chars, len(text))
    call.saw_usage(usage)
    call.finish()
    if usage is None:
        _warn_estimated(budget, run.model)


#: The models each budget was warned about: charged by estimate, as neither a client shekel patches nor
#: LangChain reported their usage.
_estimated_warned: weakref.WeakKeyDictionary[Budget, set[str | None]] = weakref.WeakKeyDictionary()


def _warn_estimated(budget: Budget, model: str | None) -> None:
    with _runs_lock:
        warned = _estimated_warned.setdefault(budget, set())
        if model in warned:
            return
        warned.add(model)
    name = "a model with no name" if model is None else f"model {redact_model(model)!r}"
    with suppress(Exception):  # the call is charged already; a warning turned error must not undo it
        warn_user(
            f"shekel: {name} is not called through a client shekel counts, and LangChain reported no token "
            f"usage for it: budget {budget.path!r} charges its calls by estimate (records marked estimated). "
            "Prefer a model built on huggingface_hub, openai or anthropic, or one that reports usage_metadata."
        )


def _result_usage(run: _Run, response: LLMResult) -> tuple[Usage | None, str]:
    """Usage LangChain returned for the run (message usage, then ``token_usage``, then the streamed usage),
    or None; and the text generated."""
    input_tokens = output_tokens = 0
    found = False
    text = ""
    for generations in response.generations:
        for generation in generations:
            text += generation.text
            usage = _message_usage(getattr(generation, "message", None))
            if usage is not None:
                input_tokens, output_tokens, found = usage.input_tokens, usage.output_tokens, True
    if found:
        return Usage(input_tokens, output_tokens), text
    token_usage = (response.llm_output or {}).get("token_usage")
    prompt = _int_or_none(_get(token_usage, "prompt_tokens"))
    completion = _int_or_none(_get(token_usage, "completion_tokens"))
    if prompt is not None and completion is not None:
        return Usage(prompt, completion), text
    return run.streamed_usage, text


def _result_model(response: LLMResult) -> str | None:
    candidates: list[object] = [(response.llm_output or {}).get("model_name")]
    for generations in response.generations:
        for generation in generations:
            candidates.append((generation.generation_info or {}).get("model_name"))
            metadata = getattr(getattr(generation, "message", None), "response_metadata", None)
            candidates.append(_get(metadata, "model_name"))
    return next((m for m in candidates if isinstance(m, str) and m), None)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _message_usage(message: object) -> Usage | None:
    usage = getattr(message, "usage_metadata", None)
    if not isinstance(usage, Mapping):
        return None
    prompt = _int_or_none(usage.get("input_tokens"))
    completion = _int_or_none(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    return Usage(prompt, completion)


# ---------------------------------------------------------------------------------- small readers
def _get(container: object, name: str) -> object:
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


#: LangChain's serialisation ids (``lc`` namespaces) of models whose calls an adapter counts: ChatOpenAI and
#: ChatAnthropic go through the OpenAI and Anthropic SDKs.
_COUNTED_BY_ADAPTER = (["langchain", "chat_models", "openai"], ["langchain", "chat_models", "anthropic"])


def _made_through_huggingface_hub(serialized: Mapping[str, Any] | None) -> bool:
    """Whether the model is one whose calls an adapter counts: langchain-huggingface's (through
    ``huggingface_hub``), ``ChatOpenAI`` and ``ChatAnthropic`` (through the OpenAI and Anthropic SDKs)."""
    path = (serialized or {}).get("id")
    if not isinstance(path, list) or not path:
        return False
    return path[0] in _SDK_PACKAGES or path[:3] in _COUNTED_BY_ADAPTER


_SDK_PACKAGES = frozenset({"langchain_huggingface", "langchain_openai", "langchain_anthropic"})


def _model_name(params: Mapping[str, Any], metadata: Mapping[str, Any]) -> str | None:
    for value in (params.get("model"), params.get("model_id"), metadata.get("ls_model_name")):
        if isinstance(value, str) and value:
            return value
    return None


# Inside ``with budget(...)`` every LangChain run gets a handler without ``callbacks=[...]``: LangChain adds the
# value of this variable to each run that has no BudgetCallbackHandler yet. With no budget active it does nothing.
_automatic: ContextVar[BudgetCallbackHandler | None] = ContextVar(
    "shekel_langchain_handler",
    default=BudgetCallbackHandler(),  # noqa: B039  # shared on purpose: runs' state lives in _runs, not here
)
# Not inheritable: each run gets it anew, and only when the run carries no BudgetCallbackHandler of its own.
# Inherited, the parent run's automatic handler came first in a child run's handlers and owned the run, so a
# handler given to the model's constructor (``callbacks=[...]``) stood aside inside a chain or a graph.
register_configure_hook(_automatic, False, BudgetCallbackHandler)
