"""The part of a budget that lives in a store: its limits there, holds, charges and the figures it reads.

A chain of budgets may mix budgets of this process and shared ones, in one store or several. A call holds
its local budgets first (the in-memory ledger), then each store's budgets in one atomic step per store;
when a later step fails, the holds taken so far are released. Settles and releases go to every store the
call held in. A store that is down refuses the call (``on_store_error="closed"``) or lets it go ahead,
counted in this process only, with one warning per budget (``"open"``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import _shares as shares
from ._money import ZERO, exact_money
from ._redact import redact_model
from ._shares import Owner, Share
from ._warn import warn_user
from .errors import BudgetConfigError, StoreError
from .ledger import OUTPUT_MARGIN_TOKENS, Account, NoRoom
from .ledger import memory as ledger
from .ledger.shared import (
    OPEN_ADVICE,
    Ask,
    Charge,
    Figures,
    Grant,
    SharedLimits,
    Store,
    StoreNoRoom,
    from_nano,
    nano_up,
    new_hold_id,
    owner,
)

if TYPE_CHECKING:
    from ._budget import Budget, Reservation

#: Polling a store for room that other processes' calls hold: first wait, and the longest.
POLL_FIRST = 0.02
POLL_LONGEST = 1.0


@dataclass(slots=True)
class SharedPart:
    """A shared budget's place in a store, as ``budget(..., store=...)`` configured it."""

    store: Store
    limits: SharedLimits
    lease: float
    fail_open: bool
    #: This process's share of the budget: its figures as last seen in the store, plus this process's since.
    seen: Share
    #: Whether this process holds itself to the budget's limits against its share while the store is down
    #: (on_store_error="open" and no window: a window's share would not be counted per window).
    enforced: bool = False
    #: The id of the ``shekel run`` run whose budget this is (its calls' log entries carry it), else None.
    run: str | None = None
    #: The store is a ``shekel run``'s own temporary file: errors name the budget, not the store.
    private: bool = False


@dataclass(slots=True)
class StoreHold:
    """One call's hold in one store: on these budgets, under this id."""

    store: Store
    names: list[str]
    hold_id: str
    lease: float
    renew_at: float
    #: Each budget's window as the call was held (its settle is charged there, even after a reset).
    windows: list[str] = field(default_factory=list)


def groups(chain: Sequence[Budget]) -> tuple[tuple[Store, tuple[Budget, ...]], ...]:
    """The shared budgets of a chain, grouped by store (innermost first): one atomic step each. Store objects
    of one ledger (two URLs of one SQLite file, a URL and a client of one Redis database) are one store: the
    innermost budget's object takes the step, and a name open in both is held and charged once."""
    by_store: dict[Hashable, tuple[Store, list[Budget]]] = {}
    for budget in chain:
        part = budget._shared
        if part is not None:
            by_store.setdefault(part.store.ledger_key, (part.store, []))[1].append(budget)
    return tuple((store, tuple(members)) for store, members in by_store.values())


def ask_for(reservation: Reservation, members: Sequence[Budget], hold_id: str, patient: bool = True) -> Ask:
    price = reservation.price
    flexible = reservation.flexible
    return Ask(
        hold_id=hold_id,
        owner=owner(reservation.task),
        input_nano=0 if price is None else nano_up(price.worst_input_cost(reservation.prompt_tokens)),
        output_nano=0 if price is None else nano_up(price.output_per_token),
        prompt_tokens=reservation.prompt_tokens,
        max_tokens=None if flexible else reservation.max_tokens,
        ceiling=reservation.max_tokens if reservation.max_tokens is not None else reservation.ceiling,
        margin=OUTPUT_MARGIN_TOKENS,
        lease=min(m._shared.lease for m in members if m._shared is not None),
        model=redact_model(reservation.model),
        patient=patient and reservation.chain[0]._patience != 0,
    )


def hold(reservation: Reservation, patient: bool) -> list[tuple[Store, tuple[Budget, ...], Ask]]:
    """The steps a call takes in its stores (for :func:`take_holds` and :func:`atake_holds`)."""
    steps = []
    groups = reservation.chain[0]._shared_groups
    hold_id = new_hold_id(_runs(groups))
    for store, members in groups:
        steps.append((store, members, ask_for(reservation, members, hold_id, patient)))
    return steps


def _runs(groups: Sequence[tuple[Store, tuple[Budget, ...]]]) -> str:
    """The ``shekel run`` runs whose budgets hold the call, for its hold id (each run reports its own calls)."""
    runs = [
        m._shared.run for _, members in groups for m in members if m._shared is not None and m._shared.run
    ]
    return ".".join(dict.fromkeys(runs)) if runs else ""


def _limits(members: Sequence[Budget]) -> list[SharedLimits]:
    """The limits to enforce in one store, one entry per name: a budget opened inside another of the same
    name (a tenant's budget entered again by a helper it calls) is one ledger, held to the tighter limits."""
    merged: dict[str, SharedLimits] = {}
    for member in members:
        if member._shared is None:
            continue
        limits = member._shared.limits
        seen = merged.get(limits.name)
        if seen is None:
            merged[limits.name] = limits
            continue
        if seen.window != limits.window:
            raise BudgetConfigError(
                f"budget {limits.name!r} is open twice in one chain with different windows "
                f"({seen.window.spec!r} and {limits.window.spec!r}): open it with the same window."
            )
        merged[limits.name] = replace(
            seen,
            max_nano=_tighter(seen.max_nano, limits.max_nano),
            max_calls=_tighter(seen.max_calls, limits.max_calls),
            max_tokens=_tighter(seen.max_tokens, limits.max_tokens),
        )
    return list(merged.values())


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _names(members: Sequence[Budget]) -> list[str]:
    """Each name once (see :func:`_limits`)."""
    return list(dict.fromkeys(m._name for m in members))


def _windows(members: Sequence[Budget], names: list[str]) -> list[str]:
    """The window of each of ``names`` (one window per name: :func:`_limits` refuses two)."""
    spec = {m._name: m._shared.limits.window.spec for m in members if m._shared is not None}
    return [spec[name] for name in names]


def _apply(
    reservation: Reservation, store: Store, members: Sequence[Budget], ask: Ask, grant: Grant, mark: int
) -> StoreHold:
    names = _names(members)
    with shares.LOCK:
        for name in names:
            share = _share(members, name)
            figures = grant.figures.get(name)
            if figures is not None:
                _seen(share, figures, store, name, mark)
            share.hold(grant.money, grant.tokens, _owner(reservation))
            reservation.share_holds = (*reservation.share_holds, (share, grant.money, grant.tokens))
    if grant.max_tokens is not None and grant.max_tokens != reservation.max_tokens:
        reservation.chain[0]._take_grant(reservation, grant.max_tokens)
    return StoreHold(
        store, names, ask.hold_id, ask.lease, time.monotonic() + ask.lease / 3, _windows(members, names)
    )


def take_holds(reservation: Reservation, patient: bool = True) -> None:
    """Hold the call in every store of its chain (sync). Raises :class:`StoreNoRoom` or ``StoreError``
    after giving back what it took. A store that is down with ``on_store_error="open"`` is skipped: this
    process's share of its budgets answers for it (:func:`_share_answers`)."""
    taken: list[StoreHold] = []
    try:
        for store, members, ask in hold(reservation, patient):
            if taken:  # a later store may grant fewer output tokens: ask for no more than granted so far
                ask.ceiling = reservation.max_tokens or ask.ceiling
            mark = shares.mark()
            try:
                grant = store.reserve(_limits(members), ask)
            except StoreNoRoom as no_room:
                no_room.members = members  # which budgets refused: the error names the right one
                raise
            except StoreError as error:
                if not _open(members, error):
                    raise _for_command(error, members) from error.__cause__
                _share_answers(reservation, members, ask.patient)
                taken.append(_not_held(store, members, ask.hold_id))
                continue
            taken.append(_apply(reservation, store, members, ask, grant, mark))
            _send_unsent(store)
    except BaseException:
        _unhold_shares(reservation)
        for held in taken:
            if held.lease:
                _quietly(held.store.release, held.names, held.hold_id)
        raise
    reservation.shared = tuple(taken)


async def atake_holds(reservation: Reservation, patient: bool = True) -> None:
    """:func:`take_holds` with the stores' async operations."""
    taken: list[StoreHold] = []
    try:
        for store, members, ask in hold(reservation, patient):
            if taken:
                ask.ceiling = reservation.max_tokens or ask.ceiling
            mark = shares.mark()
            try:
                grant = await _cancel_safe_reserve(store, _limits(members), ask)
            except StoreNoRoom as no_room:
                no_room.members = members  # which budgets refused: the error names the right one
                raise
            except StoreError as error:
                if not _open(members, error):
                    raise _for_command(error, members) from error.__cause__
                _share_answers(reservation, members, ask.patient)
                taken.append(_not_held(store, members, ask.hold_id))
                continue
            taken.append(_apply(reservation, store, members, ask, grant, mark))
            await _asend_unsent(store)
    except BaseException:
        _unhold_shares(reservation)
        for held in taken:
            if held.lease:
                await _aquietly(held.store.arelease, held.names, held.hold_id)
        raise
    reservation.shared = tuple(taken)


async def _cancel_safe_reserve(store: Store, budgets: list[SharedLimits], ask: Ask) -> Grant:
    """``store.areserve``, except that a caller cancelled while the store reserves leaves no hold: the store
    may still take it (a thread, a script already sent), and it is then given back."""
    attempt = asyncio.ensure_future(store.areserve(budgets, ask))
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        names = [b.name for b in budgets]

        def give_back(done: asyncio.Future[Grant]) -> None:
            if not done.cancelled() and done.exception() is None:
                task = asyncio.ensure_future(_aquietly(store.arelease, names, ask.hold_id))
                _pending.add(task)
                task.add_done_callback(_pending.discard)

        attempt.add_done_callback(give_back)
        raise


def _open(members: Sequence[Budget], error: StoreError) -> bool:
    """With ``on_store_error="open"``: warn once per budget, and let the call go ahead."""
    parts = [m._shared for m in members if m._shared is not None]
    if not all(part.fail_open for part in parts):
        return False
    cause = str(error).replace(OPEN_ADVICE, "").rstrip(". ")
    for member, part in zip(members, parts, strict=False):
        if not part.seen.warned:  # once per name and outage, whichever budget objects open it
            part.seen.warned = True
            held = (
                "held to this process's share of the budget"
                if part.enforced
                else "with no limit of this budget in this process (a budget with a window has no share: "
                "put a local budget around it to cap the process)"
            )
            warn_user(
                f"shekel: the store of shared budget {member._name!r} cannot be used ({cause}): calls go "
                f"ahead, {held} (on_store_error='open'), until it answers."
            )
    return True


def _for_command(error: StoreError, members: Sequence[Budget]) -> StoreError:
    """A store error for budgets of a ``shekel run`` run: without advice only a ``budget()`` can follow."""
    if any(m._shared is not None and (m._shared.run or m._shared.private) for m in members):
        return StoreError(str(error).replace(OPEN_ADVICE, ""))
    return error


@exact_money
def _share_answers(reservation: Reservation, members: Sequence[Budget], patient: bool) -> None:
    """The store of ``members`` is down (``on_store_error="open"``): this process's share of each of their
    budgets answers for it. For a budget that enforces its share, the call is checked, and sized when shekel
    chooses its ``max_tokens``, against the budget's figures as last seen in the store plus what this
    process spent since and holds now, under the budget's limits (of two budgets of one name, the tighter),
    as the store would check it (``patient``: as :func:`ledger.hold`). Raises :class:`StoreNoRoom` (marked
    ``down``) when it does not fit; waiting helps when other calls of this process hold the room."""
    budget = reservation.chain[0]
    names = _names(members)
    limits = {each.name: each for each in _limits(members)}
    enforced = {m._name for m in members if m._shared is not None and m._shared.enforced}
    with budget._lock, shares.LOCK:  # the tree's lock first, as a release takes them
        for name in names:
            if name not in enforced:
                continue
            share = _share(members, name)
            others = _as_account(budget, share, limits[name], None)
            try:
                granted, _, _ = _hold_on(others, reservation, patient)
            except NoRoom as no_room:
                own = share.own(_owner(reservation))
                refusal = StoreNoRoom(
                    name,
                    no_room.reason,
                    own[2] < share.held_calls
                    and _fits(_as_account(budget, share, limits[name], own), reservation),
                    _figures(others),
                    nano_up(no_room.needed),
                )
                refusal.members, refusal.down = members, True
                raise refusal from None
            if granted is not None and granted != reservation.max_tokens:
                budget._take_grant(reservation, granted)
        _, cost, _ = _hold_on(Account(budget, None, None, None), reservation, patient)
        money = nano_up(cost)
        tokens = reservation.prompt_tokens
        if reservation.max_tokens is not None:
            tokens += reservation.max_tokens + OUTPUT_MARGIN_TOKENS
        for name in names:
            share = _share(members, name)
            share.hold(money, tokens, _owner(reservation))
            reservation.share_holds = (*reservation.share_holds, (share, money, tokens))


def _share(members: Sequence[Budget], name: str) -> Share:
    """The process's share of budget ``name`` (every budget of one name in one store has the same)."""
    return next(m._shared.seen for m in members if m._name == name and m._shared is not None)


def _hold_on(account: Account, reservation: Reservation, patient: bool) -> tuple[int | None, Decimal, int]:
    """Hold the call on ``account`` alone, as the in-memory ledger does: (max_tokens, money, tokens)."""
    price = reservation.price
    return ledger.hold(
        [account],
        ZERO if price is None else price.worst_input_cost(reservation.prompt_tokens),
        ZERO if price is None else price.output_per_token,
        reservation.prompt_tokens,
        None if reservation.flexible else reservation.max_tokens,
        reservation.max_tokens if reservation.max_tokens is not None else reservation.ceiling,
        patient,
    )


def _as_account(
    budget: Budget, share: Share, limits: SharedLimits, own: tuple[int, int, int] | None
) -> Account:
    """``share`` as an account held to ``limits``: with what every call in flight holds, or given ``own``
    (what the caller's calls in flight hold), with that only."""
    account = Account(
        budget,
        None if limits.max_nano is None else from_nano(limits.max_nano),
        limits.max_calls,
        limits.max_tokens,
    )
    account.spent, account.calls, account.failed = from_nano(share.spent), share.calls, share.failed
    account.input_tokens, account.output_tokens = share.input_tokens, share.output_tokens
    money, tokens, calls = (share.held_money, share.held_tokens, share.held_calls) if own is None else own
    account.reserved, account.reserved_tokens, account.inflight = from_nano(money), tokens, calls
    return account


def _fits(account: Account, reservation: Reservation) -> bool:
    try:
        _hold_on(account, reservation, False)
    except NoRoom:
        return False
    return True


def _figures(account: Account) -> Figures:
    return Figures(
        spent=nano_up(account.spent),
        reserved=nano_up(account.reserved),
        calls=account.calls,
        failed=account.failed,
        inflight=account.inflight,
        input_tokens=account.input_tokens,
        output_tokens=account.output_tokens,
        reserved_tokens=account.reserved_tokens,
    )


def _unhold_shares(reservation: Reservation) -> None:
    """The call's holds in the process's shares end (it settled, or was given back)."""
    if reservation.share_holds:
        with shares.LOCK:
            _unhold_shares_locked(reservation)


def _unhold_shares_locked(reservation: Reservation) -> None:
    owner = _owner(reservation)
    for share, money, tokens in reservation.share_holds:
        share.unhold(money, tokens, owner)
    reservation.share_holds = ()


def _owner(reservation: Reservation) -> Owner:
    return reservation.thread, None if reservation.task is None else id(reservation.task)


def unheld(groups: Sequence[tuple[Store, tuple[Budget, ...]]]) -> tuple[StoreHold, ...]:
    """Holds that were never taken, for a call charged after the fact: each store charges it on settle."""
    hold_id = new_hold_id(_runs(groups))
    return tuple(_not_held(store, members, hold_id) for store, members in groups)


def _not_held(store: Store, members: Sequence[Budget], hold_id: str) -> StoreHold:
    """A hold the store never took (lease 0: nothing to renew or release), charged there on settle."""
    names = _names(members)
    return StoreHold(store, names, hold_id, 0.0, float("inf"), _windows(members, names))


#: Charges of calls the stores never held (made while a store was down) that could not be written to it
#: yet, by ledger: they count in the process's shares, and are sent once the store answers again.
_unsent: dict[Hashable, list[tuple[int, Store, list[str], str, Charge, list[str]]]] = {}
#: The most charges kept per store (the oldest are dropped first, with a warning).
MAX_UNSENT = 100_000


def _seen(share: Share, figures: Figures, store: Store, name: str, mark: int) -> None:
    """The store answered for ``name``, asked after charge ``mark``: its figures, plus this process's
    charges since, and those not written there yet (:data:`shares.LOCK` held)."""
    share.seen(figures, mark)
    share.warned = False  # the store answers: the next outage warns again
    for seq, _, names, _, charge, _ in _unsent.get(store.ledger_key, ()):
        if name in names and seq <= mark:  # a later one is among the charges since
            share._add(charge.money, charge.outcome == "ok", charge.input_tokens, charge.output_tokens)


def _keep_unsent(held: StoreHold, charge: Charge, seq: int) -> None:
    with shares.LOCK:
        kept = _unsent.setdefault(held.store.ledger_key, [])
        kept.append((seq, held.store, held.names, held.hold_id, charge, held.windows))
        if len(kept) > MAX_UNSENT:
            del kept[0]
            warn_user(
                f"shekel: more than {MAX_UNSENT} calls made while {held.store.display} was down wait to be "
                "written to it: the oldest is dropped (that store will not count it)."
            )


def _take_unsent(store: Store) -> list[tuple[int, Store, list[str], str, Charge, list[str]]]:
    if not _unsent:
        return []
    with shares.LOCK:
        return _unsent.pop(store.ledger_key, [])


def _send_unsent(store: Store) -> None:
    """The store answered: write the charges of calls it never held (each once: a failure keeps the rest)."""
    kept = _take_unsent(store)
    for index, (_, held_store, names, hold_id, charge, windows) in enumerate(kept):
        try:
            held_store.settle(names, hold_id, charge, windows)
        except Exception:
            with shares.LOCK:
                _unsent.setdefault(store.ledger_key, [])[:0] = kept[index:]
            return


def _send_every_unsent() -> None:
    """At exit: the charges still kept, to every store that answers (best effort: the process ends)."""
    with shares.LOCK:
        stores = [kept[0][1] for kept in _unsent.values() if kept]
    for store in stores:
        with contextlib.suppress(Exception):
            _send_unsent(store)


def _forget_unsent_in_child() -> None:
    """A forked child: the charges its parent kept are the parent's to send (sent twice otherwise)."""
    _unsent.clear()


atexit.register(_send_every_unsent)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_unsent_in_child)


async def _asend_unsent(store: Store) -> None:
    kept = _take_unsent(store)
    for index, (_, held_store, names, hold_id, charge, windows) in enumerate(kept):
        try:
            await held_store.asettle(names, hold_id, charge, windows)
        except Exception:
            with shares.LOCK:
                _unsent.setdefault(store.ledger_key, [])[:0] = kept[index:]
            return


def settle(reservation: Reservation, charge: Charge) -> None:
    """Charge the call in every store it held in. A store that fails keeps the hold, which its lease ends:
    then it is charged what it held, never less."""
    with shares.LOCK:  # the hold ends and the charge is made in one step: no one sees neither
        _unhold_shares_locked(reservation)
        seq = shares.next_seq()
        answered = charge.outcome == "ok"
        for share in {id(m._shared.seen): m._shared.seen for m in reservation.chain if m._shared}.values():
            share.charge(seq, charge.money, answered, charge.input_tokens, charge.output_tokens)
    holds = reservation.shared
    if not holds:
        return
    loop = _running_loop() if reservation.defer else None
    for held in holds:
        if loop is not None:  # an async caller: settle in a task, which the caller awaits (``settled``)
            task = loop.create_task(_asettle_one(held, charge, seq))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            reservation.settling = (*reservation.settling, task)
        else:
            try:
                held.store.settle(held.names, held.hold_id, charge, held.windows)
            except Exception as error:
                _not_settled(held, charge, seq, error)


async def _asettle_one(held: StoreHold, charge: Charge, seq: int) -> None:
    """One store's settle of a call made by an async caller (see :func:`settle`)."""
    try:
        await held.store.asettle(held.names, held.hold_id, charge, held.windows)
    except Exception as error:
        _not_settled(held, charge, seq, error)


def _not_settled(held: StoreHold, charge: Charge, seq: int, error: Exception) -> None:
    if held.lease:
        _warn_failed(error)  # the hold stays in the store; its lease charges it at most what it held
    else:
        _keep_unsent(held, charge, seq)  # the store never held it: sent when it answers again


async def settled(reservation: Reservation) -> None:
    """Wait for the store settles a call started in a task (the async adapters await this, so the shared
    figures include the call when the caller's ``await`` returns)."""
    tasks, reservation.settling = reservation.settling, ()
    for task in tasks:
        await asyncio.shield(task)


def release(reservation: Reservation) -> None:
    """Give back the call's holds in every store (it was never sent)."""
    _unhold_shares(reservation)
    loop = _running_loop() if reservation.defer else None
    for held in reservation.shared:
        if not held.lease:
            continue  # never held in the store: nothing to give back
        if loop is not None:
            task = loop.create_task(_aquietly(held.store.arelease, held.names, held.hold_id))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
        else:
            _quietly(held.store.release, held.names, held.hold_id)


def renew_if_due(reservation: Reservation) -> None:
    """Renew the leases of a long call (a stream still being read) once a third of them has passed."""
    now = time.monotonic()
    for held in reservation.shared:
        if now >= held.renew_at:
            held.renew_at = now + held.lease / 3
            _quietly(held.store.renew, held.names, held.hold_id, held.lease)


def renew_in_tasks(reservation: Reservation) -> None:
    """:func:`renew_if_due` for a stream read in an event loop: each renewal runs in a task of its own, so a
    store round trip (or a store busy for seconds) never holds up the loop or the stream."""
    loop = _running_loop()
    if loop is None:  # another async library's loop (trio): renewed here, as for a sync stream
        renew_if_due(reservation)
        return
    now = time.monotonic()
    for held in reservation.shared:
        if now >= held.renew_at:
            held.renew_at = now + held.lease / 3
            task = loop.create_task(_aquietly(held.store.arenew, held.names, held.hold_id, held.lease))
            _pending.add(task)
            task.add_done_callback(_pending.discard)


def send_settles(groups: Sequence[tuple[Store, tuple[Budget, ...]]]) -> None:
    """Send the settles the chain's stores keep to send with a later command (a budget leaving its block),
    and the charges of calls made while a store was down, if it answers now."""
    for store, _ in groups:
        if store.waiting:
            _quietly(store.flush)
        _send_unsent(store)


async def asend_settles(groups: Sequence[tuple[Store, tuple[Budget, ...]]]) -> None:
    """:func:`send_settles` in a worker thread: the event loop never waits on a store."""
    for store, _ in groups:
        if store.waiting:
            await _aquietly(asyncio.to_thread, store.flush)
        await _asend_unsent(store)


def figures(part: SharedPart) -> Figures:
    _send_unsent(part.store)  # the store may be back: what it missed first, so that its figures hold it
    mark = shares.mark()
    result = part.store.read(part.limits)
    with shares.LOCK:
        _seen(part.seen, result, part.store, part.limits.name, mark)
    return result


#: Settles running in tasks, kept referenced until they finish.
_pending: set[asyncio.Task[Any]] = set()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as error:  # the hold stays in the store; its lease charges it at most what it held
        _warn_failed(error)


async def _aquietly(fn: Any, *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as error:
        _warn_failed(error)


def _warn_failed(error: Exception) -> None:
    # A warning turned error (-W error) must not escape either: the other stores' holds are still to be
    # settled, and the caller's answer to be handed back.
    with contextlib.suppress(Exception):
        said = str(error).replace(OPEN_ADVICE, "")  # after the call: nothing to configure for it
        warn_user(f"shekel: {said} The call's hold in the store ends with its lease.")


__all__ = ["SharedPart", "StoreHold", "atake_holds", "groups", "release", "settle", "take_holds"]
