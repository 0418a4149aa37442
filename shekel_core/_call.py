"""The accounting core of one LLM call: reserve before, observe the stream, settle or release after.

Adapters build a :class:`CallAccounting` (or a subclass that reads their SDK's answers) with what the call
asks for (``ask``), have the budget reserve it (``Budget.reserve_call``, or ``areserve_call`` from async
code), ``begin`` the call with the reservation, and hand the response (or each stream chunk) to it. The
sync and async stream drivers below differ only by ``await``.

How a call ends, and what it costs (docs/hard-caps.md, "Failed calls"):

* answered: charged its reported usage, or an estimate marked as such;
* never sent (the arguments were refused, the connection could not be opened): released, counts nowhere;
* answered with an error (4xx/5xx): costs nothing, but counts against ``max_llm_calls`` as a failed request;
* no answer after the request left (a timeout, a dropped connection, a cancellation), or an answer shekel
  could not read: charged what it held, since the provider most likely did the work.

Nothing shekel does after the request may change what the caller gets: reading the answer is defensive,
and an answer it cannot read is passed on as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final

from ._budget import Budget, Reservation
from ._sharing import renew_if_due, renew_in_tasks
from ._usage import Usage, read_usage
from .ledger import ERROR, OK, OUTPUT_MARGIN_TOKENS, UNKNOWN

#: Truthy while a counted call runs, so that layers below it (a recursive retry inside huggingface_hub, the
#: adapter patch under an integration's handler) do not count the same call again. Integrations set True;
#: adapters set the call they count, where their HTTP hooks note what happened to the request.
call_in_progress: ContextVar[bool | CallAccounting] = ContextVar("shekel_call_in_progress", default=False)

#: Set by an integration around a framework run it charges (a LangChain LLM run): each call counted below
#: it is reported here as it starts, so the integration charges the run itself only when nothing below did.
call_observer: ContextVar[Callable[[CallAccounting], None] | None] = ContextVar(
    "shekel_call_observer", default=None
)

#: What a call asks a budget for: (model, prompt tokens (high), max_tokens or None, ceiling, provider).
Ask = tuple[str | None, int, int | None, int, str | None]

_UNREADABLE_NOTE = (
    "the answer could not be read (malformed usage, content or choices): charged what the call held"
)


def before_reserve() -> Budget | None:
    """Called by an adapter just before it reserves a call it counts; returns the budget to charge instead
    of the active one, or None.

    An observer that itself holds a reservation for what may be this very call (a LlamaIndex LLM event whose
    LLM calls ``InferenceClient``) gives it back first, through its ``before_reserve`` method, so that the two
    holds never overlap (otherwise a call needing the last dollar or the last ``max_llm_calls`` slot would be
    refused by its own shadow), and names the budget it held on: a handler bound to a budget has the call
    charged there, whatever budget is active around it.
    """
    observer = call_observer.get()
    if observer is not None:
        hand_back = getattr(observer, "before_reserve", None)
        if hand_back is not None:
            target: Budget | None = hand_back()
            return target
    return None


class _Skip:
    __slots__ = ()


#: Returned by an ``observe`` function for a chunk the caller must not see (the usage-only chunk that
#: shekel itself asked for).
SKIP: Final = _Skip()
_END: Final = object()


class Hold:
    """Returned by an ``observe`` function for a chunk to hand on only after the next one has been read.

    The finish chunk of a stream whose usage shekel asked for is held until the usage-only chunk behind it
    has been observed, so a caller that stops reading at ``finish_reason`` (llama-index's ``astream_chat``
    does) still leaves exact usage behind.
    """

    __slots__ = ("chunk",)

    def __init__(self, chunk: Any) -> None:
        self.chunk = chunk


class CallAccounting:
    """State of one call in flight. Settles exactly once: ``finish``/``end_with`` charge or release."""

    __slots__ = (
        "_done",
        "_prompt_fair",
        "_usage",
        "answered",
        "ask",
        "model_label",
        "output_chars",
        "output_chunks",
        "pieces",
        "reservation",
        "sent",
        "served_by",
        "source",
        "status",
        "streamed",
        "unreadable",
    )

    def __init__(
        self,
        ask: Ask,
        *,
        prompt_fair: int,
        source: str,
        streamed: bool,
        model_label: str | None = None,
    ) -> None:
        self.ask = ask
        self.source = source
        self.streamed = streamed
        self.model_label = model_label
        #: The Inference Provider the answer says served the call (``x-inference-provider``), when known.
        self.served_by: str | None = None
        #: Whether the request was handed to the HTTP client (None: shekel cannot tell), and the status of
        #: its answer, from the adapter's HTTP hooks.
        self.sent: bool | None = None
        self.status: int | None = None
        #: Whether part of the answer could not be read (a malformed field): charged what the call held.
        self.unreadable = False
        #: Whether a stream delivered the end of its answer (a finish reason): its usage is then final.
        self.answered = False
        self._prompt_fair = prompt_fair
        self._usage: Usage | None = None
        # Observers of streams add to these directly: they run once per chunk, so no method call is spent.
        self.output_chars = 0
        self.output_chunks = 0
        #: The text received, kept only when the model's tokenizer can count it (see ``usage``).
        self.pieces: list[str] | None = None
        self._done = False

    def begin(self, reservation: Reservation) -> None:
        """The call holds ``reservation`` and is about to be sent."""
        self.reservation = reservation
        observer = call_observer.get()
        if observer is not None:
            observer(self)

    # ---- feeding what the server sent
    def saw_usage(self, usage: Usage | None) -> None:
        """Remember the latest usage seen: streams may repeat a running total, so the last one wins."""
        if usage is not None:
            self._usage = usage

    def saw_output(self, text: object) -> None:
        """Count generated text, the basis of an estimate when the server reports no usage."""
        if isinstance(text, str) and text:
            self.output_chars += len(text)
            self.output_chunks += 1

    def saw_output_tokens(self, tokens: int) -> None:
        """Exact output tokens known without a usage block (text generation ``details``)."""
        self.output_chunks = tokens
        self.output_chars = 0

    # ---- ending the call
    def reported_usage(self) -> Usage | None:
        """The usage the server reported, if it did."""
        return self._usage

    def usage(self) -> Usage:
        """Reported usage, or an estimate (marked as such) from the prompt and the output received."""
        if self._usage is not None:
            return self._usage
        # Servers stream about one token per chunk; text averages about four characters per token, unless
        # the model's own tokenizer counts what was received.
        counted = None
        if self.pieces:
            from ._tokenizer import output_tokens

            counted = output_tokens(self.reservation.model, self.pieces)
        if counted is None:
            counted = math.ceil(self.output_chars / 4)
        output = max(self.output_chunks, counted)
        # The server cannot have generated more than it was allowed to (when the limit was sent).
        allowed = self.output_allowed()
        if allowed is not None:
            output = min(output, allowed)
        return Usage(self._prompt_fair, output, estimated=True)

    def output_allowed(self) -> int | None:
        """The most output tokens the server was told to generate, which caps an estimate of its output."""
        return self.reservation.max_tokens

    def held_usage(self) -> Usage:
        """The worst case the call held: its prompt estimate and every output token it was allowed."""
        reservation = self.reservation
        allowed = reservation.max_tokens
        output = self.usage().output_tokens if allowed is None else allowed + OUTPUT_MARGIN_TOKENS
        return Usage(reservation.prompt_tokens, output, estimated=True)

    def settle(self, response: Any) -> Any:
        """Charge the call from its whole answer (:meth:`_read`) and hand the answer back: an answer shekel
        cannot read is the caller's, as it came (charged what the call held)."""
        try:
            self._read(response)
        except Exception:
            self.unreadable = True
        self.finish()
        return response

    def _read(self, response: Any) -> None:
        """Note the usage and output of a whole answer (each adapter's call reads its own shape)."""

    def finish(self) -> None:
        """Settle at the usage seen so far (a stream that ended or was abandoned). Idempotent."""
        if self._done:
            return
        self._done = True
        reservation = self.reservation
        usage = self._usage
        if usage is None and self.unreadable:
            # Answered, but not readably: charged the worst case the call held, as a call made.
            reservation.chain[0].settle(
                reservation,
                self.held_usage(),
                streamed=self.streamed,
                source=self.source,
                label=self.model_label,
                provider=self.served_by,
                note=_UNREADABLE_NOTE,
            )
            return
        reservation.chain[0].settle(
            reservation,
            usage if usage is not None else self.usage(),
            streamed=self.streamed,
            source=self.source,
            label=self.model_label,
            provider=self.served_by,
        )

    def end_with(self, error: BaseException) -> None:
        """The call raised ``error`` before an answer was read: release it when the request never left,
        count it as failed when the server answered with an error, charge what it held when the outcome is
        unknown. Idempotent; never raises (the caller's own error must come out unchanged)."""
        if self._done:
            return
        outcome = failure_outcome(error, self.sent, self.status)
        if outcome is None:
            self._done = True
            self.reservation.chain[0].release(self.reservation)
            return
        self._done = True
        with contextlib.suppress(Exception):  # a warn_at turned error must not replace the provider's
            self._settle(outcome, None)

    def fail(self) -> None:
        """The call was not sent after all: release the reservation. Idempotent."""
        if self._done:
            return
        self._done = True
        self.reservation.chain[0].release(self.reservation)

    def _settle(self, outcome: str, note: str | None) -> None:
        self._done = True
        reservation = self.reservation
        usage = self.held_usage() if outcome == UNKNOWN else Usage(0, 0)
        reservation.chain[0].settle(
            reservation,
            usage,
            streamed=self.streamed,
            source=self.source,
            label=self.model_label,
            provider=self.served_by,
            outcome=outcome,
            note=note,
        )


def failure_outcome(error: BaseException, sent: bool | None, status: int | None) -> str | None:
    """What a call that raised ``error`` cost: None (never sent: free, counts nowhere), ``"error"`` (the
    server answered with an error status) or ``"unknown"`` (the request left and no usable answer came).

    ``sent`` and ``status`` come from the HTTP client's hooks (None: unknown); without them the type of the
    error decides.
    """
    if status is not None:
        return ERROR if status >= 400 else UNKNOWN
    if sent is False or _never_left(error):
        return None
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return ERROR if status >= 400 else UNKNOWN
    if sent is True or _lost_in_flight(error):
        return UNKNOWN
    return None


#: Errors that mean the request never reached the server (by name, across httpx, the SDKs and asyncio).
_NEVER_LEFT = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "PoolTimeout",
        "UnsupportedProtocol",
        "LocalProtocolError",
        "InvalidURL",
    }
)
_LOST_IN_FLIGHT = frozenset(
    {
        "ReadTimeout",
        "WriteTimeout",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "InferenceTimeoutError",
        "APITimeoutError",
        "APIConnectionError",
        "TimeoutException",
        "NetworkError",
    }
)


def _chain_names(error: BaseException) -> set[str]:
    names: set[str] = set()
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        names.update(cls.__name__ for cls in type(current).__mro__)
        current = current.__cause__ or current.__context__
        seen += 1
    return names


def _never_left(error: BaseException) -> bool:
    return bool(_chain_names(error) & _NEVER_LEFT)


def _lost_in_flight(error: BaseException) -> bool:
    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt, TimeoutError)):
        return True
    return bool(_chain_names(error) & _LOST_IN_FLIGHT)


def _settle_if_never_started(call: CallAccounting, stream: Any) -> None:
    # The request was sent (the clients open streams eagerly), so the prompt is charged; a generator dropped
    # before its first ``next`` never runs its ``finally``, so without this it would hold its reservation
    # forever. ``stream`` is a weak reference where the stream takes one: the SDKs' streams are generators
    # of an object that holds the wrapper, and a strong one here would keep that cycle alive for ever.
    if not call._done:
        if isinstance(stream, weakref.ref):
            stream = stream()
        close = getattr(stream, "close", None)
        try:
            if close is not None:
                close()
        finally:
            call.finish()


def iterate_sync(call: CallAccounting, stream: Iterator[Any], observe: Callable[[Any], Any]) -> Iterator[Any]:
    """Yield what ``observe`` passes through; charge what was received however the iteration ends.

    A stream dropped before it is read is settled when it is garbage-collected.
    """
    wrapped = _iterate_sync(call, stream, observe)
    try:
        held: Any = weakref.ref(stream)
    except TypeError:  # an iterator without weak references cannot refer back to the wrapper either
        held = stream
    weakref.finalize(wrapped, _settle_if_never_started, call, held).atexit = False
    return wrapped


def iterate_async(
    call: CallAccounting, stream: AsyncIterator[Any], observe: Callable[[Any], Any]
) -> AsyncIterator[Any]:
    """The async twin of :func:`iterate_sync`."""
    wrapped = _iterate_async(call, stream, observe)
    weakref.finalize(wrapped, _settle_if_never_started, call, None).atexit = False
    return wrapped


def _observe(call: CallAccounting, observe: Callable[[Any], Any], chunk: Any) -> Any:
    """``observe(chunk)``, except that a chunk it cannot read is handed on as it came (and the call is
    charged what it held, since its usage can no longer be trusted)."""
    try:
        return observe(chunk)
    except Exception:
        call.unreadable = True
        return chunk


def _iterate_sync(
    call: CallAccounting, stream: Iterator[Any], observe: Callable[[Any], Any]
) -> Iterator[Any]:
    error: BaseException | None = None
    completed = False
    shared = call.reservation.shared
    try:
        chunks = iter(stream)
        for chunk in chunks:
            if shared:
                renew_if_due(call.reservation)  # a long stream keeps its holds in the stores
            try:
                item = observe(chunk)
            except Exception:  # _observe, inline: a chunk shekel cannot read is handed on as it came
                call.unreadable = True
                item = chunk
            if item is SKIP:
                continue
            if item.__class__ is Hold:
                try:
                    after = next(chunks, _END)
                except BaseException:
                    yield item.chunk  # the caller gets what it would have got before the error
                    raise
                yield from _release(call, item, after, observe)
                continue
            yield item
        completed = True
    except Exception as exc:
        error = exc
        raise
    finally:
        try:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        finally:
            _finish(call, completed, error)


async def _iterate_async(
    call: CallAccounting, stream: AsyncIterator[Any], observe: Callable[[Any], Any]
) -> AsyncIterator[Any]:
    error: BaseException | None = None
    completed = False
    shared = call.reservation.shared
    try:
        chunks = stream.__aiter__()
        async for chunk in chunks:
            if shared:
                renew_in_tasks(call.reservation)
            try:
                item = observe(chunk)
            except Exception:  # _observe, inline
                call.unreadable = True
                item = chunk
            if item is SKIP:
                continue
            if item.__class__ is Hold:
                try:
                    after = await chunks.__anext__()
                except StopAsyncIteration:
                    after = _END
                except BaseException:
                    yield item.chunk
                    raise
                for released in _release(call, item, after, observe):
                    yield released
                continue
            yield item
        completed = True
    except Exception as exc:
        error = exc
        raise
    finally:
        try:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            _finish(call, completed, error)
            if call.reservation.settling:  # a shared budget's store: settled before the caller goes on
                from ._sharing import settled

                await settled(call.reservation)


def _release(call: CallAccounting, held: Hold, after: Any, observe: Callable[[Any], Any]) -> tuple[Any, ...]:
    """What to hand on once the chunk behind a held one was read: the held chunk, then that one unless it
    was the usage chunk shekel asked for."""
    if after is _END:
        return (held.chunk,)
    after = _observe(call, observe, after)
    if after is SKIP:
        return (held.chunk,)
    return (held.chunk, after.chunk if after.__class__ is Hold else after)


def _finish(call: CallAccounting, completed: bool, error: BaseException | None) -> None:
    if completed:
        call.finish()
        return
    # Nothing that a ``warn_at`` warning turned error or a failing ``on_warn`` raises may replace the
    # provider's error: the ledger is already updated when warnings fire.
    with contextlib.suppress(Exception):
        if error is None or (call.answered and call.reported_usage() is not None):
            # Abandoned by the caller (closed, dropped, its task cancelled): the connection is closed and
            # the provider stops, so what was received is what it cost. Or the answer and its usage came
            # before the error.
            call.finish()
        elif _error_answer(error):
            if call.output_chunks:
                call.finish()  # the server ended its answer with an error after part of it: charge that part
            else:
                call._settle(ERROR, None)  # an error answered in the stream before any output: free
        elif call.output_chunks and not _lost_in_flight(error):
            call.finish()  # part of the answer, then one the client could not read: the client stopped there
        else:
            # The connection broke, or nothing of the answer could be read: what the provider did is unknown.
            call.end_with(error)


#: Errors that carry an error the server sent inside a stream (by name: each SDK has its own).
_ERROR_ANSWERS = frozenset({"TextGenerationError"})


def _error_answer(error: BaseException) -> bool:
    return bool(_chain_names(error) & _ERROR_ANSWERS)


__all__ = [
    "OK",
    "SKIP",
    "CallAccounting",
    "Hold",
    "call_in_progress",
    "failure_outcome",
    "iterate_async",
    "iterate_sync",
    "read_usage",
]
