"""The accounting core of one LLM call: reserve before, observe the stream, settle or release after.

Adapters and integrations build a :class:`CallAccounting` after ``Budget.reserve`` succeeded and hand the
response (or each stream chunk) to it. The sync and async stream drivers below differ only by ``await``.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final

from ._budget import Budget, Reservation
from ._usage import Usage, read_usage

#: Truthy while a counted call runs, so that layers below it (a recursive retry inside huggingface_hub, the
#: adapter patch under an integration's handler) do not count the same call again. Integrations set True;
#: the huggingface_hub adapter sets the call it counts, where its answer-header hook notes who served it.
call_in_progress: ContextVar[bool | CallAccounting] = ContextVar("shekel_call_in_progress", default=False)

#: Set by an integration around a framework run it charges (a LangChain LLM run): each call counted below
#: it is reported here as it starts, so the integration charges the run itself only when nothing below did.
call_observer: ContextVar[Callable[[CallAccounting], None] | None] = ContextVar(
    "shekel_call_observer", default=None
)


def before_reserve() -> Budget | None:
    """Called by the adapter just before it reserves a call it counts; returns the budget to charge instead
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
    """State of one call in flight. Settles exactly once: ``finish``/``settle_*`` charge, ``fail`` releases."""

    __slots__ = (
        "_done",
        "_prompt_fair",
        "_usage",
        "model_label",
        "output_chars",
        "output_chunks",
        "reservation",
        "served_by",
        "source",
        "streamed",
    )

    def __init__(
        self,
        reservation: Reservation,
        *,
        prompt_fair: int,
        source: str,
        streamed: bool,
        model_label: str | None = None,
    ) -> None:
        self.reservation = reservation
        self.source = source
        self.streamed = streamed
        self.model_label = model_label
        #: The Inference Provider the answer says served the call (``x-inference-provider``), when known.
        self.served_by: str | None = None
        self._prompt_fair = prompt_fair
        self._usage: Usage | None = None
        # Observers of streams add to these directly: they run once per chunk, so no method call is spent.
        self.output_chars = 0
        self.output_chunks = 0
        self._done = False
        observer = call_observer.get()
        if observer is not None:
            observer(self)

    # ---- feeding what the server sent
    def saw_usage(self, usage: Usage | None) -> None:
        """Remember the latest usage seen: streams may repeat a running total, so the last one wins."""
        if usage is not None:
            self._usage = usage

    def saw_output(self, text: str | None) -> None:
        """Count generated text, the basis of an estimate when the server reports no usage."""
        if text:
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
        # Servers stream about one token per chunk; text averages about four characters per token.
        output = max(self.output_chunks, math.ceil(self.output_chars / 4))
        # The server cannot have generated more than it was allowed to.
        allowed = self.reservation.max_tokens
        if allowed is not None:
            output = min(output, allowed)
        return Usage(self._prompt_fair, output, estimated=True)

    def finish(self) -> None:
        """Settle at the usage seen so far (a stream that ended, broke or was abandoned). Idempotent."""
        if self._done:
            return
        self._done = True
        reservation = self.reservation
        usage = self._usage
        reservation.chain[0].settle(
            reservation,
            usage if usage is not None else self.usage(),
            streamed=self.streamed,
            source=self.source,
            label=self.model_label,
            provider=self.served_by,
        )

    def fail(self) -> None:
        """The call raised before anything was delivered: release the reservation. Idempotent."""
        if self._done:
            return
        self._done = True
        self.reservation.chain[0].release(self.reservation)


def _settle_if_never_started(call: CallAccounting, stream: Any) -> None:
    # The request was sent (huggingface_hub opens streams eagerly), so the prompt is charged; a generator
    # dropped before its first ``next`` never runs its ``finally``, so without this it would hold its
    # reservation forever.
    if not call._done:
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
    weakref.finalize(wrapped, _settle_if_never_started, call, stream).atexit = False
    return wrapped


def iterate_async(
    call: CallAccounting, stream: AsyncIterator[Any], observe: Callable[[Any], Any]
) -> AsyncIterator[Any]:
    """The async twin of :func:`iterate_sync`."""
    wrapped = _iterate_async(call, stream, observe)
    weakref.finalize(wrapped, _settle_if_never_started, call, None).atexit = False
    return wrapped


def _iterate_sync(
    call: CallAccounting, stream: Iterator[Any], observe: Callable[[Any], Any]
) -> Iterator[Any]:
    completed = failed = False
    try:
        chunks = iter(stream)
        for chunk in chunks:
            item = observe(chunk)
            if item is SKIP:
                continue
            if item.__class__ is Hold:
                try:
                    after = next(chunks, _END)
                except BaseException:
                    yield item.chunk  # the caller gets what it would have got before the error
                    raise
                yield from _release(item, after, observe)
                continue
            yield item
        completed = True
    except Exception:
        failed = True
        raise
    finally:
        try:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        finally:
            _finish(call, completed, failed)


async def _iterate_async(
    call: CallAccounting, stream: AsyncIterator[Any], observe: Callable[[Any], Any]
) -> AsyncIterator[Any]:
    completed = failed = False
    try:
        chunks = stream.__aiter__()
        async for chunk in chunks:
            item = observe(chunk)
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
                for released in _release(item, after, observe):
                    yield released
                continue
            yield item
        completed = True
    except Exception:
        failed = True
        raise
    finally:
        try:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            _finish(call, completed, failed)


def _release(held: Hold, after: Any, observe: Callable[[Any], Any]) -> tuple[Any, ...]:
    """What to hand on once the chunk behind a held one was read: the held chunk, then that one unless it
    was the usage chunk shekel asked for."""
    if after is _END:
        return (held.chunk,)
    after = observe(after)
    if after is SKIP:
        return (held.chunk,)
    return (held.chunk, after.chunk if after.__class__ is Hold else after)


def _finish(call: CallAccounting, completed: bool, failed: bool) -> None:
    if completed:
        call.finish()
        return
    if failed and not call.output_chunks and call.reported_usage() is None:
        call.fail()  # the stream broke before it delivered anything: a failed call costs nothing
        return
    # The stream broke after delivering part of the answer, or was abandoned (GeneratorExit, a cancelled
    # task): charge what was received. Nothing that a ``warn_at`` warning turned error or a failing
    # ``on_warn`` raises may replace the provider's error: the ledger is already updated when warnings fire.
    with contextlib.suppress(Exception):
        call.finish()


__all__ = [
    "SKIP",
    "CallAccounting",
    "Hold",
    "call_in_progress",
    "iterate_async",
    "iterate_sync",
    "read_usage",
]
