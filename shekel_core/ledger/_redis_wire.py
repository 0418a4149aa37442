"""How :class:`~shekel.stores.RedisStore` talks to its server on the hot path: one round trip per call.

A call costs a reserve and a settle. Sent as two commands they are two round trips, and on a busy machine
the client's side of a round trip (redis-py's command machinery, two system calls, a context switch) costs
more than the scripts themselves. So:

* commands are packed here, once, into the Redis protocol and written to a connection this wire keeps
  (no connection-pool checkout per command); ``EVALSHA`` by the script's SHA1, loaded when the server
  answers ``NOSCRIPT`` (a restarted server) and sent again, which is safe: a ``NOSCRIPT`` script never ran;
* a settle is not sent on its own: it waits, at most :data:`SETTLE_DELAY` seconds, for the process's next
  command to this server (usually the next call's reserve) and goes in the same write, ahead of it; the
  server runs them in that order. Until it is sent the call's hold stays in the store, at the call's
  worst case, so a late settle can only make other processes see *more* spent, never less: caps stay hard.
  A thread of this wire sends settles nothing else carried; a budget leaving its ``with`` block, a read of
  shared figures and the end of the process send them too.

Settles whose write or answer is lost are not sent again (a settle sent twice would charge twice); their
holds end with their lease, as for any settle that fails. The wire is fork-aware: a child process starts
with no connection and no settle of its parent's, and sends each settle as it is made (a forked worker may
be killed by its pool as soon as its task returns), at one round trip more per call.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import select
import sys
import threading
import time
import weakref
from typing import Any

import redis
from redis.exceptions import NoScriptError

#: Longest time (seconds) a settle waits for another command to carry it before a thread sends it alone.
SETTLE_DELAY = 0.005
#: A wire's sending thread ends after this many seconds without a settle to send.
_IDLE_EXIT = 1.0

_log = logging.getLogger("shekel.stores")


def pack(*parts: str | int) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings, sized in UTF-8 bytes."""
    texts = [part if type(part) is str else str(part) for part in parts]
    body = "".join([f"${len(text)}\r\n{text}\r\n" for text in texts])
    if not body.isascii():  # sizes count bytes
        body = "".join([f"${len(text.encode())}\r\n{text}\r\n" for text in texts])
    return f"*{len(texts)}\r\n{body}".encode()


class Wire:
    """Connections of one process to one Redis server, and the settles waiting to be sent on them."""

    def __init__(
        self,
        pool: redis.ConnectionPool,
        scripts: dict[str, str],
        deferred: str,
        folds: dict[str, str],
        resend: frozenset[str] = frozenset(),
    ) -> None:
        """``scripts``: every script by name. ``deferred``: the script :meth:`defer` sends late (the settle).
        ``folds``: scripts that carry the waiting ones in the same script run, by the name of the script
        that does both (the reserve: ``SETTLES_THEN_RESERVE``). ``resend``: queued scripts that do no harm
        run twice (an undo): queued again when the write carrying them fails, where settles are not."""
        self._pool = pool
        self._sources = scripts
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in scripts.items()}
        self._deferred = deferred
        self._folds = folds
        self._resend = resend
        self._start()
        _wires.add(self)

    def _start(self) -> None:
        """The per-process state (again in a child process after a fork: nothing of the parent's)."""
        self._idle: list[Any] = []  # connections not in use
        self._lock = threading.Lock()
        self._sent = threading.Condition(self._lock)  # notified as a batch of settles is answered
        self._pending: list[tuple[str, list[str], list[Any]]] = []  # (script, keys, args)
        self._since = 0.0
        self._batches = 0  # batches of settles taken to be sent, so far
        self._in_flight: set[int] = set()  # those written and not yet answered
        self._sender: threading.Event | None = None  # the sending thread's stop signal, while it runs

    def keep(self, connection: Any) -> None:
        """A connection (not connected yet) to use first."""
        self._idle.append(connection)

    def _command(self, script: str, keys: list[str], args: list[Any]) -> tuple[str, bytes]:
        return script, pack("EVALSHA", self._shas[script], len(keys), *keys, *args)

    # ---------------------------------------------------------------- operations
    def call(
        self,
        script: str,
        keys: list[str],
        args: list[Any],
        in_order: bool = False,
        undo: tuple[str, list[str], list[Any]] | None = None,
    ) -> Any:
        """Run ``script`` and return its answer, with the waiting settles run ahead of it: in the same
        script run where ``script`` folds them, else in the same write. ``in_order``: first wait for
        settles other threads are sending (a read must see every settle made before it; a reserve need
        not: a settle it overtakes only shows as the larger hold). ``undo``: a command (script, keys, args)
        that must not hurt if sent twice, queued as a settle is when ``script`` was written and its answer
        lost (it may have run: a reserve's hold is released). Raises the ``redis`` error of the script or
        the connection."""
        answer = self._send(script, keys, args, in_order, undo)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def defer(self, keys: list[str], args: list[Any], script: str | None = None) -> None:
        """Send the deferred script (or ``script``) with the next command, or alone within
        :data:`SETTLE_DELAY` seconds."""
        self._queue((script or self._deferred, keys, args))
        if _forked_child:
            # A forked child (a multiprocessing pool's worker, a prefork server's) may be ended by SIGTERM
            # as soon as its task returns (``Pool.__exit__`` terminates its workers), with nothing run at
            # exit: its settles are sent now, before the task's result leaves, not with a later command.
            try:
                self.flush()
            except Exception as error:  # not sent: the sending thread tries again; else its lease ends it
                _log.warning("shekel: a settle could not be sent to Redis: %s", error)

    def _queue(self, command: tuple[str, list[str], list[Any]]) -> None:
        with self._lock:
            if not self._pending:
                self._since = time.monotonic()
                _owing.add(self)  # a store dropped with settles waiting stays until they are sent
            self._pending.append(command)
            if self._sender is None:
                self._sender = stop = threading.Event()
                thread = threading.Thread(target=_send_late, args=(weakref.ref(self), stop), daemon=True)
                thread.name = "shekel-redis-settles"
                thread.start()

    @property
    def waiting(self) -> bool:
        """Whether settles of this process wait to be sent, or are being sent."""
        return bool(self._pending or self._in_flight)

    def flush(self) -> None:
        """Send the settles waiting now and wait for every settle being sent. Raises the ``redis`` error of
        the connection; a settle's own error answer is logged (as a failed settle is: its hold ends with
        its lease)."""
        self._send(None, [], [], True)

    def _send(
        self,
        script: str | None,
        keys: list[str],
        args: list[Any],
        in_order: bool,
        undo: tuple[str, list[str], list[Any]] | None = None,
    ) -> Any:
        with self._lock:
            if in_order and self._in_flight:  # wait for the settles taken before now, not for later ones
                mark = self._batches
                while self._in_flight and min(self._in_flight) <= mark:
                    self._sent.wait()
            waiting, ticket = self._pending, 0
            if waiting:  # taken: defer() appends to the new list from now on
                self._pending = []
                self._batches += 1
                ticket = self._batches
                self._in_flight.add(ticket)
                _owing.discard(self)
            else:
                waiting = []  # not the live list, which other threads append to
        if not waiting and script is None:
            return None
        try:
            fold = self._folds.get(script) if waiting and script is not None else None
            if fold is not None and all(one[0] == self._deferred for one in waiting):
                every_key = [key for _, some, _ in waiting for key in some]
                every_key += keys
                header: list[Any] = [len(waiting)]
                for _, some_keys, some_args in waiting:
                    header += [len(some_keys), len(some_args), *some_args]
                batch = [self._command(fold, every_key, header + args)]
                quiet = 0
            else:
                batch = [self._command(*one) for one in waiting]
                quiet = len(batch)
                if script is not None:
                    batch.append(self._command(script, keys, args))
            try:
                return self._exchange(batch, quiet, in_order)[-1]
            except _NotSent:
                raise
            except BaseException:  # written (in part, maybe), its answer not read: it may run, or have run
                for again in [one for one in waiting if one[0] in self._resend] + ([undo] if undo else []):
                    self._queue(again)
                raise
        except _NotSent as error:  # never written (no connection): the settles wait for the next command
            if waiting:
                with self._lock:
                    self._pending[:0] = waiting
                    if len(self._pending) == len(waiting):
                        self._since = time.monotonic()
                    _owing.add(self)
            raise error.cause from None
        finally:
            if ticket:
                with self._lock:
                    self._in_flight.discard(ticket)
                    self._sent.notify_all()

    def close(self) -> None:
        """Send the waiting settles, stop the sending thread, and disconnect (the wire is used again as
        new: a later settle starts a sending thread, a later command connects)."""
        try:
            self.flush()
        finally:
            with self._lock:
                stop, self._sender = self._sender, None
            if stop is not None:
                stop.set()
            idle, self._idle = self._idle, []
            for connection in idle:
                connection.disconnect()

    # ---------------------------------------------------------------- the wire itself
    def _exchange(self, batch: list[tuple[str, bytes]], quiet: int, in_order: bool) -> list[Any]:
        """Write ``batch`` at once and read an answer per command (an exception for an error answer). The
        error answers of the first ``quiet`` commands (settles) are logged.

        Commands the server did not know the script of (it restarted, or its scripts were flushed) never
        ran: every script is loaded and they are sent again, in their order. With ``in_order`` the last
        command (a read, reset, release or renew: each safe to run twice) is sent again after them when it
        ran ahead of one of them.
        """
        answers, failed = self._round_trip(batch)
        if not failed:
            return answers
        missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if missing:
            last = len(batch) - 1
            if in_order and missing[-1] != last:
                missing.append(last)
            load = [("", pack("SCRIPT", "LOAD", source)) for source in self._sources.values()]
            try:
                again, _ = self._round_trip(load + [batch[i] for i in missing])
            except _NotSent as error:  # some of the batch ran: none of it is sent again
                raise error.cause from None
            for loaded in again[: len(load)]:
                if isinstance(loaded, Exception):
                    raise loaded
            for i, answer in zip(missing, again[len(load) :], strict=True):
                answers[i] = answer
        for (script, _), answer in zip(batch[:quiet], answers, strict=False):
            if isinstance(answer, Exception):
                _log.warning("shekel: a %s sent to Redis failed: %s", script, answer)
        return answers

    def _connection(self) -> Any:
        """A connection of this wire's own (made from the client's pool settings, not counted against its
        ``max_connections``: the client's own commands keep their room). A kept one is checked first, as
        redis-py's pool does on every checkout: idle, it has nothing to read, so a readable one was closed
        by the server (an idle ``timeout``, a restart, a failover, ``CLIENT KILL``) and is reconnected
        instead of failing the next call. The check is one ``select`` of its socket."""
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._pool.connection_class(**self._pool.connection_kwargs)
        sock = getattr(connection, "_sock", None)  # None: not connected (it connects as it sends)
        try:
            closed = sock is not None and bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            closed = True
        if closed:
            connection.disconnect()  # it reconnects as it sends
        return connection

    def _round_trip(self, batch: list[tuple[str, bytes]]) -> tuple[list[Any], bool]:
        """The answers to ``batch``, and whether any is an error."""
        connection = self._connection()
        answers: list[Any] = []
        failed = False
        try:
            connection.connect()  # a no-op when connected
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._idle.append(connection)
            raise _NotSent(error) from error
        try:
            connection.send_packed_command([b"".join([command for _, command in batch])])
            for _ in batch:
                try:
                    answers.append(connection.read_response())
                except redis.ResponseError as error:  # an error answer, read whole: the connection is in step
                    answers.append(error)
                    failed = True
        except BaseException:
            connection.disconnect()  # mid-answer: never reuse it out of step (it reconnects when used again)
            raise
        finally:
            self._idle.append(connection)
        return answers, failed


class _NotSent(Exception):
    """Nothing of a batch was written: the server could not be reached."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _send_late(ref: weakref.ReferenceType[Wire], stop: threading.Event) -> None:
    """The sending thread of a wire: settles no other command carried within their delay are sent here.
    It ends when ``stop`` is set (the wire was closed), the wire is gone, or after a second without work."""
    idle_since = time.monotonic()
    failures = 0
    retry_at = 0.0  # after a failure: not before this time
    while not stop.is_set():
        wire = ref()
        if wire is None:
            return
        with wire._lock:
            now = time.monotonic()
            if not wire._pending:
                if now - idle_since > _IDLE_EXIT:
                    if wire._sender is stop:
                        wire._sender = None
                    return
                due = SETTLE_DELAY
            else:
                idle_since = now
                due = max(wire._since + SETTLE_DELAY, retry_at) - now
        if due > 0:
            del wire  # not kept alive while asleep
            stop.wait(due)
            continue
        try:
            wire.flush()
            failures = 0
            retry_at = 0.0
        except Exception as error:  # a thread must not die of a store that is down
            if not failures:
                _log.warning(
                    "shekel: settles could not be sent to Redis: %s (they are sent when it is back; a hold "
                    "whose lease ends first is charged what it held)",
                    error,
                )
            failures += 1
            retry_at = time.monotonic() + min(30.0, 0.1 * 2**failures)  # the server is down: less often
        del wire


_wires: weakref.WeakSet[Wire] = weakref.WeakSet()
#: Wires with settles waiting, held until they are sent.
_owing: set[Wire] = set()


#: Whether this process is a fork of one that imported this module (see :meth:`Wire.defer`).
_forked_child = False


def _after_fork_in_child() -> None:
    global _forked_child
    _forked_child = True
    _owing.clear()
    for wire in list(_wires):
        wire._start()


class _ForkHook:
    """A multiprocessing worker made by fork ends with ``os._exit``, without ``atexit``: it runs
    multiprocessing's finalizers instead, which it clears as it starts and then asks its after-fork hooks
    for (this one registers the flush)."""

    registered = False

    @staticmethod
    def after_fork(_: object) -> None:
        import multiprocessing.util

        multiprocessing.util.Finalize(None, _flush_all, exitpriority=10)


_FORK_HOOK = _ForkHook()


def _hook_multiprocessing() -> None:
    """Register the hook once multiprocessing is loaded: before each fork, so the child inherits it."""
    util = sys.modules.get("multiprocessing.util")
    if util is not None and not _ForkHook.registered:
        _ForkHook.registered = True
        util.register_after_fork(_FORK_HOOK, _ForkHook.after_fork)


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork to survive
    os.register_at_fork(before=_hook_multiprocessing, after_in_child=_after_fork_in_child)


@atexit.register
def _flush_all() -> None:
    for wire in list(_wires):
        with contextlib.suppress(Exception):  # at exit, a store that is down can only keep its holds
            wire.flush()
