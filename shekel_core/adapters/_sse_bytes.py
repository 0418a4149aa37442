"""Counting a streamed answer at its bytes: the raw responses of the OpenAI and Anthropic SDKs.

``.with_streaming_response`` and ``.with_raw_response`` hand the caller the HTTP response itself, which it
may read however it likes: ``parse()`` (the SDK's ``Stream``), ``iter_lines()``, ``iter_bytes()``,
``read()``. Every one of them reads the bytes of the ``httpx.Response``'s ``stream``, so that is where the
call is counted: :func:`count_sync` / :func:`count_async` put in its place a byte stream that splits the
bytes into server-sent events, hands each event's JSON (as an object whose fields read as attributes) to the
call's ``observe``, and passes the bytes on, less the events ``observe`` says the caller must not see (the
usage-only chunk shekel asked for). The call is settled when the bytes end, when the response is closed
(charged what was received), or when it is garbage-collected unread.

The byte stream put in place subclasses the ``SyncByteStream`` / ``AsyncByteStream`` of the stream it wraps,
since the response checks that type: the OpenAI SDK uses ``httpx``, newer Anthropic SDKs its fork ``httpx2``.
Nothing here imports either.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from functools import lru_cache
from typing import Any

from .._call import SKIP, CallAccounting
from .._call import _finish as finish_stream
from .._sharing import renew_if_due, renew_in_tasks, settled

#: The blank line that ends a server-sent event, in the three line endings the format allows.
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class _Event(dict[str, Any]):
    """A JSON object whose fields also read as attributes (None when absent), as the observers read the
    SDKs' parsed types."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return _view(self.get(name))


def _view(value: Any) -> Any:
    if type(value) is dict:
        return _Event(value)
    if type(value) is list:
        return [_view(item) for item in value]
    return value


class _Events:
    """Splits bytes into events and observes each; gives back the bytes to hand on."""

    __slots__ = ("buffer", "call", "observe")

    def __init__(self, call: CallAccounting, observe: Callable[[Any], Any]) -> None:
        self.call = call
        self.observe = observe
        self.buffer = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self.buffer + data if self.buffer else data
        kept: list[bytes] = []
        start = 0
        for match in _BOUNDARY.finditer(buffer):
            end = match.end()
            event = buffer[start:end]
            if self._shown(event):
                kept.append(event)
            start = end
        self.buffer = buffer[start:]
        return b"".join(kept)

    def flush(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        return rest if rest and self._shown(rest) else b""

    def _shown(self, event: bytes) -> bool:
        """Observe ``event``; whether the caller is to see it."""
        lines = [line[5:] for line in event.splitlines() if line.startswith(b"data:")]
        if not lines:
            return True
        payload = b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
        if payload.startswith(b"[DONE]"):
            return True
        try:
            parsed = json.loads(payload)
        except ValueError:  # the SDK reports what it cannot parse to the caller; shekel passes it on
            return True
        if type(parsed) is not dict:
            return True
        try:
            item = self.observe(_Event(parsed))
        except Exception:  # a chunk shekel cannot read is handed on as it came, and charged what it held
            self.call.unreadable = True
            return True
        return item is not SKIP


class _SyncBytes:
    """Mixed into the ``SyncByteStream`` of the wrapped stream's HTTP library."""

    def __init__(self, call: CallAccounting, inner: Any, observe: Callable[[Any], Any]) -> None:
        self._call = call
        self._inner = inner
        self._events = _Events(call, observe)
        # Dropped unread and unclosed: the request was sent, so it is charged what was received.
        weakref.finalize(self, call.finish).atexit = False

    def __iter__(self) -> Iterator[bytes]:
        call, events = self._call, self._events
        completed = False
        error: BaseException | None = None
        try:
            for data in self._inner:
                if call.reservation.shared:
                    renew_if_due(call.reservation)
                shown = events.feed(data)
                if shown:
                    yield shown
            rest = events.flush()
            if rest:
                yield rest
            completed = True
        except Exception as exc:
            error = exc
            raise
        finally:
            finish_stream(call, completed, error)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            finish_stream(self._call, False, None)  # closed part-way: what was received; else a no-op


class _AsyncBytes:
    """Mixed into the ``AsyncByteStream`` of the wrapped stream's HTTP library."""

    def __init__(self, call: CallAccounting, inner: Any, observe: Callable[[Any], Any]) -> None:
        self._call = call
        self._inner = inner
        self._events = _Events(call, observe)
        weakref.finalize(self, call.finish).atexit = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call, events = self._call, self._events
        completed = False
        error: BaseException | None = None
        try:
            async for data in self._inner:
                if call.reservation.shared:
                    renew_in_tasks(call.reservation)
                shown = events.feed(data)
                if shown:
                    yield shown
            rest = events.flush()
            if rest:
                yield rest
            completed = True
        except Exception as exc:
            error = exc
            raise
        finally:
            finish_stream(call, completed, error)
            if call.reservation.settling:
                await settled(call.reservation)

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._inner, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            finish_stream(self._call, False, None)
            if self._call.reservation.settling:
                await settled(self._call.reservation)


def _base(inner: Any, name: str) -> type | None:
    """The class called ``name`` among those ``inner`` is an instance of (httpx's or httpx2's)."""
    for cls in type(inner).__mro__:
        if cls.__name__ == name:
            return cls
    return None


@lru_cache(maxsize=8)
def _counted(mixin: type, base: type) -> type:
    return type(f"Counted{base.__name__}", (mixin, base), {})


def count_sync(call: Any, response: Any) -> bool:
    """Count ``call`` (a CallAccounting with ``observe``) at the bytes of ``response`` (an ``httpx.Response`` not yet read); False when it is
    not one."""
    inner = getattr(response, "stream", None)
    base = _base(inner, "SyncByteStream")
    if base is None:
        return False
    response.stream = _counted(_SyncBytes, base)(call, inner, call.observe)
    return True


def count_async(call: Any, response: Any) -> bool:
    """The async twin of :func:`count_sync`."""
    inner = getattr(response, "stream", None)
    base = _base(inner, "AsyncByteStream")
    if base is None:
        return False
    response.stream = _counted(_AsyncBytes, base)(call, inner, call.observe)
    return True


__all__ = ["count_async", "count_sync"]
