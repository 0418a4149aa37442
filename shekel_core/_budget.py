"""The budget: configuration, pricing and reports of a spending limit that nests.

What a call holds and is charged is kept by the ledger (:mod:`shekel.ledger`); a budget decides what a call
asks for (its price, a fallback model, how many output tokens), hands that to the ledger of every budget of
its chain, waits when calls in flight hold the room (``wait=``), and keeps records and per-model totals.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, Inexact, Rounded, getcontext, localcontext
from types import TracebackType
from typing import Any, NoReturn, ParamSpec, TypeVar

from . import _context
from . import _events as events
from . import _shares as shares
from . import _sharing as sharing
from . import _validate as validate
from ._money import MONEY_CONTEXT, MONEY_PRECISION, ZERO, exact_money
from ._pricing import (
    Price,
    PriceTable,
    parse_price_table,
    resolve_bundled,
    resolve_in_tables,
    unknown_price_message,
)
from ._pricing_files import env_pricing, load_pricing_file
from ._records import CallRecord, ModelTotals, RecordFields, record_dict, totals_dict
from ._redact import redact_model
from ._shares import Share
from ._sharing import SharedPart, StoreHold
from ._usage import Usage
from ._warn import warn_user
from .errors import (
    BudgetConfigError,
    BudgetExceededError,
    ForkedBudgetError,
    PricingError,
    ShekelError,
    StoreError,
)
from .ledger import ERROR, OK, OUTPUT_MARGIN_TOKENS, UNKNOWN, Account, NoRoom
from .ledger import memory as ledger
from .ledger.shared import OPEN_ADVICE, Charge, Store, StoreNoRoom, from_nano, nano_up
from .ledger.waiting import Tree, Waiter

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=ShekelError)

#: Output tokens asked for when the caller gave no ``max_tokens`` (capped further by what the budget can pay).
DEFAULT_MAX_TOKENS_CEILING = 4096
#: Per-call records kept by each budget; older ones are folded into the per-model aggregates only.
MAX_RECORDS = 1000
#: Direct children remembered by each budget for ``summary()``; their spend always reaches the parent.
MAX_CHILDREN = 256
#: Seconds a call waits for room that calls in flight hold, unless the budget says otherwise.
DEFAULT_WAIT = 60.0
#: (model, provider) pairs whose price from the chain's tables each budget caches.
_PRICE_CACHE_SIZE = 256

#: Entering a budget for the first time fixes its parent: one lock for every first entry in the process, so
#: two threads entering a fresh budget under different parents cannot both attach it.
_ATTACH_LOCK = threading.Lock()

#: Counts the forks this process descends from. A budget remembers the generation it was made in: one made
#: before a fork lives on in the child as a private copy of its ledger, which must not be spent from there.
_generation = 0


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_UNSET: Any = object()
#: The fork generation of a shared budget: never "made before the fork", its ledger lives in its store.
_SHARED_BORN = 2**62
#: The default lease of a shared budget's holds, in seconds.
DEFAULT_LEASE = 600.0
_STORE_ERROR_POLICIES = ("closed", "open")


def _shared_part(
    name: str | None,
    store: object,
    window: object,
    lease: object,
    on_store_error: object,
    limit: Decimal | None,
    max_calls: int | None,
    max_tokens: int | None,
) -> SharedPart | None:
    """Check the arguments of a shared budget (``store=``); None for a budget of this process alone."""
    from ._shares import share_of
    from .ledger.shared import MAX_EXACT_NANO, SharedLimits, parse_lease, parse_window
    from .stores import open_store

    if store is None:
        given = [
            k
            for k, v in (("window", window), ("lease", lease), ("on_store_error", on_store_error))
            if v is not None and v is not _UNSET
        ]
        if given:
            raise BudgetConfigError(
                f"{'=, '.join(given)}= only apply to shared budgets: give the budget a store too, e.g. "
                "budget(max_usd=5, name='tenant:42', store='sqlite:///budgets.db', window='1d')."
            )
        return None
    if name is None:
        raise BudgetConfigError(
            "a shared budget needs a name (its key in the store: every process that opens the same name "
            "shares one ledger), e.g. budget(max_usd=20, name='nightly-eval', store=...)."
        )
    policy = "closed" if on_store_error is _UNSET else on_store_error
    if policy not in _STORE_ERROR_POLICIES:
        raise BudgetConfigError(
            f"on_store_error must be 'closed' (refuse calls while the store is down) or 'open' (let them go "
            f"ahead, counted in this process only), got {on_store_error!r}."
        )
    parsed_window = parse_window(window)
    parsed_lease = DEFAULT_LEASE if lease is _UNSET else parse_lease(lease)
    max_nano = None if limit is None else int(limit * 1_000_000_000)  # rounded down: the cap is safe
    if max_nano is not None and max_nano > MAX_EXACT_NANO:
        raise BudgetConfigError(
            f"max_usd={limit} is above what a shared budget counts exactly (${MAX_EXACT_NANO / 1e9:,.0f}: "
            "stores keep integer nano-dollars, and Redis scripts count in doubles)."
        )
    for what, count_limit in (("max_llm_calls", max_calls), ("max_total_tokens", max_tokens)):
        if count_limit is not None and count_limit > MAX_EXACT_NANO:
            raise BudgetConfigError(f"{what}={count_limit} is more than a store counts exactly (2**53 - 1).")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BudgetConfigError(
            f"name={name!r} cannot be written to a store: it is not valid text."
        ) from None
    opened = open_store(store)  # type: ignore[arg-type]
    return SharedPart(
        opened,
        SharedLimits(name, parsed_window, max_nano, max_calls, max_tokens),
        parsed_lease,
        policy == "open",
        share_of(opened.ledger_key, name),
    )


@dataclass(slots=True, eq=False)
class Reservation:
    """Money, tokens and a call slot held on every budget of ``chain`` for one call in flight.

    It keeps its own reference to the chain, so the call settles on the budgets that paid for it even when
    it finishes after the ``with`` block (an async stream finalised later by the event loop). ``thread`` and
    ``task`` are who made the call: a call never waits for room that its own thread or task holds.
    Compared and hashed by identity: each is one call.
    """

    chain: tuple[Budget, ...]
    cost: Decimal
    model: str | None
    price: Price | None
    max_tokens: int | None
    fallback_from: str | None
    provider: str | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    thread: int = 0
    task: object = None
    #: Whether shekel chose ``max_tokens`` (the caller gave none), and the most it could have chosen.
    flexible: bool = False
    ceiling: int = 0
    #: The call's holds in the stores of shared budgets of its chain.
    shared: tuple[StoreHold, ...] = ()
    #: ``time.monotonic()`` when it was taken, while anything listens to settled calls (else 0).
    started: float = 0.0
    #: Store settles running in tasks (a call settled inside an event loop), awaited by async adapters.
    settling: tuple[Any, ...] = ()
    #: Whether store settles may run in tasks: the call is made by an async caller, which awaits them.
    defer: bool = False
    #: The media task the call makes (``"text-to-image"``...), priced per call only; None for token calls.
    media: str | None = None
    #: What the call holds in this process's shares of its shared budgets: (share, nano-dollars, tokens).
    share_holds: tuple[tuple[Share, int, int], ...] = ()


class Budget:
    """A spending limit for the LLM calls made inside it. Build it with :func:`shekel.budget`.

    Use it as ``with``, ``async with`` or as a decorator (each decorated call runs in a fresh copy). Budgets
    nest: a call's cost is charged to the innermost budget and every budget around it, and reserved on all
    of them before the request is sent, so that no budget can pass its ``max_usd`` or ``max_llm_calls``.
    """

    @exact_money
    def __init__(
        self,
        max_usd: float | Decimal | int | None = None,
        *,
        name: str | None = None,
        price_per_1k_tokens: Mapping[str, Any] | None = None,
        warn_at: float | None = None,
        on_warn: Callable[[float, float], object] | None = None,
        fallback: Mapping[str, Any] | None = None,
        max_llm_calls: int | None = None,
        pricing: str | os.PathLike[str] | None = None,
        on_unknown_price: str | None = None,
        max_total_tokens: int | None = None,
        wait: float | None = _UNSET,
        store: str | Store | None = None,
        window: float | str | None = None,
        lease: float = _UNSET,
        on_store_error: str = _UNSET,
    ) -> None:
        self._config: dict[str, Any] = {
            "store": store,
            "window": window,
            "lease": lease,
            "on_store_error": on_store_error,
            "pricing": pricing,
            "on_unknown_price": on_unknown_price,
            "max_total_tokens": max_total_tokens,
            "max_usd": max_usd,
            "name": name,
            "price_per_1k_tokens": price_per_1k_tokens,
            "warn_at": warn_at,
            "on_warn": on_warn,
            "fallback": fallback,
            "max_llm_calls": max_llm_calls,
            "wait": wait,
        }
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise BudgetConfigError(f"name must be a non-empty string, got {name!r}.")
        self._name = name if name is not None else "budget"
        limit = validate.limit(max_usd)
        self._prices: PriceTable | None = (
            None
            if price_per_1k_tokens is None
            else parse_price_table(price_per_1k_tokens, budget_name=self._name)
        )
        self._warn_at = validate.warn_at(warn_at, limit)
        if on_warn is not None and not callable(on_warn):
            raise BudgetConfigError(f"on_warn must be callable as on_warn(spent, limit), got {on_warn!r}.")
        validate.check_on_warn_signature(on_warn)
        self._on_warn = on_warn
        self._fallback_at, self._fallback_model = validate.fallback(fallback, limit)
        max_calls = validate.max_calls(max_llm_calls)
        self._file_prices = None if pricing is None else load_pricing_file(pricing)
        self._env_prices = env_pricing()
        self._on_unknown = validate.on_unknown(on_unknown_price)
        max_tokens = validate.max_total_tokens(max_total_tokens)
        self._wait: float | None = _UNSET if wait is _UNSET else validate.wait(wait)
        self._cap_usd, self._cap_calls, self._cap_tokens = limit, max_calls, max_tokens
        self._shared: SharedPart | None = _shared_part(
            name, store, window, lease, on_store_error, limit, max_calls, max_tokens
        )
        # A shared budget's limits are enforced in its store; its account here counts what this budget object
        # spent. With on_store_error="open" and no window, the process's share of the budget (``part.seen``)
        # answers for the store while it is down (``sharing.take_holds``).
        part = self._shared
        if part is None:
            self._account = Account(self, limit, max_calls, max_tokens)
        else:
            self._account = Account(self, None, None, None)
            spec = part.limits.window
            part.enforced = part.fail_open and spec.seconds is None and spec.calendar is None
            shares.use(part.seen, self)

        self.parent: Budget | None = None
        self._chain: tuple[Budget, ...] = (self,)
        self._accounts: tuple[Account, ...] = (self._account,)
        self._root: Budget = self
        self._tree = Tree()
        self._lock = self._tree.lock
        # The fork generation the budget was made in; a shared budget lives in its store, not in memory.
        self._born = _generation if self._shared is None else _SHARED_BORN
        # Derived from the chain, which is fixed when the budget is first entered (``_attach``): whether any
        # budget of it has a fallback, the wait that applies, and prices found in the chain's tables (which
        # never change once built) by (model, provider).
        self._chain_fallback = self._fallback_model is not None
        self._patience: float | None = DEFAULT_WAIT if self._wait is _UNSET else self._wait
        self._table_prices: dict[tuple[str | None, str | None], Price | None] = {}
        self._shared_groups = sharing.groups(self._chain)
        self._attached = False

        self._own_spent = ZERO
        self._estimated_calls = 0
        self._unpriced_calls = 0
        self._unpriced_input_tokens = 0
        self._unpriced_output_tokens = 0
        self._warned = False
        self._unpriced_warned: set[str | None] = set()
        self._models: dict[str | None, ModelTotals] = {}
        self._records: deque[RecordFields] = deque(maxlen=MAX_RECORDS)
        self._children: deque[Budget] = deque(maxlen=MAX_CHILDREN)

    # ---------------------------------------------------------------- public read-only view
    @property
    def name(self) -> str:
        """The budget's name (``"budget"`` when none was given)."""
        return self._name

    @property
    def path(self) -> str:
        """Names from the outermost budget to this one, joined by ``/``."""
        return "/".join(b._name for b in reversed(self._chain))

    @property
    def limit(self) -> float | None:
        """``max_usd`` as a float, or None for a budget without a dollar cap."""
        limit = self._cap_usd
        return None if limit is None else float(limit)

    @property
    def limit_exact(self) -> Decimal | None:
        """``max_usd`` as an exact ``Decimal``, or None."""
        return self._cap_usd

    @property
    def spent(self) -> float:
        """USD spent by calls in this budget and its children (settled calls only). For a shared budget: by
        every process, in its current window."""
        return float(self._view().spent)

    @property
    def spent_exact(self) -> Decimal:
        """``spent`` as an exact ``Decimal``."""
        return self._view().spent

    @property
    @exact_money
    def remaining(self) -> float | None:
        """``limit - spent`` (never negative), or None without a dollar cap. Calls in flight hold part of it."""
        account = self._view()
        if account.limit is None:
            return None
        return float(max(account.limit - account.spent, ZERO))

    @property
    def reserved(self) -> float:
        """USD held for calls in flight (their worst-case cost)."""
        return float(self._view().reserved)

    @property
    def calls(self) -> int:
        """LLM calls answered in this budget and its children."""
        return self._view().calls

    @property
    def failed_calls(self) -> int:
        """Requests sent that failed: an error answer (costs nothing) or no answer at all (a timeout, a dropped
        connection, a cancellation: charged what the call held). They count against ``max_llm_calls``."""
        return self._view().failed

    @property
    def calls_in_flight(self) -> int:
        """Calls holding a reservation now."""
        return self._view().inflight

    @property
    def max_llm_calls(self) -> int | None:
        return self._cap_calls

    @property
    def max_total_tokens(self) -> int | None:
        return self._cap_tokens

    @property
    def input_tokens(self) -> int:
        return self._view().input_tokens

    @property
    def output_tokens(self) -> int:
        return self._view().output_tokens

    @property
    def estimated_calls(self) -> int:
        """Calls whose usage the server did not report, so shekel charged an estimate."""
        return self._estimated_calls

    @property
    def unpriced_calls(self) -> int:
        """Calls for which no price was known: counted in tokens, charged $0."""
        return self._unpriced_calls

    @property
    def wait(self) -> float | None:
        """Seconds a call waits for room that calls in flight hold (None: as long as calls are in flight)."""
        return self._patience

    @property
    def children(self) -> list[Budget]:
        """Direct child budgets (the most recent ``MAX_CHILDREN``)."""
        with self._lock:
            return list(self._children)

    @property
    def records(self) -> list[CallRecord]:
        """This budget's own calls, most recent last (at most ``MAX_RECORDS``)."""
        with self._lock:
            return [CallRecord(*fields) for fields in self._records]

    @property
    def by_model(self) -> dict[str | None, ModelTotals]:
        """Per-model aggregates of this budget and its children (copies)."""
        with self._lock:
            return {m: _copy_totals(t) for m, t in self._models.items()}

    def __repr__(self) -> str:
        account = self._account  # this process's share: a repr never reads a store
        part = self._shared
        if part is not None:  # its limits are enforced in the store, not on this process's share
            caps = [f"${self._cap_usd}"] if self._cap_usd is not None else []
            caps += [f"{self._cap_calls} calls"] if self._cap_calls is not None else []
            caps += [f"{self._cap_tokens} tokens"] if self._cap_tokens is not None else []
            limit = " and ".join(caps) or "no limit"
            return (
                f"<Budget {self.path!r} shared in {part.store.display}, {limit}; "
                f"this process: spent=${account.spent}, calls={account.calls}>"
            )
        limit = "no limit" if account.limit is None else f"${account.limit}"
        return f"<Budget {self.path!r} spent=${account.spent} of {limit}, calls={account.calls}>"

    # ---------------------------------------------------------------- copies
    def __reduce__(self) -> NoReturn:
        if self._shared is not None:
            raise TypeError(
                f"budget {self._name!r} cannot be pickled or copied: it is shared through its store, so in "
                f"another process open it again with the same name and store (budget(..., name={self._name!r},"
                " store=...)), or use b.fresh() here."
            )
        raise TypeError(
            f"budget {self._name!r} cannot be pickled or copied: its ledger lives in this process, and a "
            "copy in another process would spend a private copy of the cap. Give the budget a shared store "
            "(budget(..., name=..., store='sqlite:///budgets.db')) to share one cap between processes, or "
            "use b.fresh() for a new budget with the same configuration."
        )

    def __copy__(self) -> NoReturn:
        self.__reduce__()

    def __deepcopy__(self, memo: object) -> NoReturn:
        self.__reduce__()

    # ---------------------------------------------------------------- entering and leaving
    def __enter__(self) -> Budget:
        from ._patching import ensure_installed

        ensure_installed()
        active = _context.current_budget()
        if not self._attached:
            with _ATTACH_LOCK:
                if not self._attached:
                    self._attach(active)
                    _context.push(self)
                    return self
        if active is not None and active is not self and active not in self._chain:
            raise BudgetConfigError(
                f"budget {self.path!r} was first entered under {self.parent.path if self.parent else 'no budget'}"
                f" and cannot be re-entered inside budget {active.path!r}; create a new budget() there instead."
            )
        _context.push(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _context.pop(self)
        if self._shared_groups:  # settles a store keeps to send with a later command go now
            sharing.send_settles(self._shared_groups)

    async def __aenter__(self) -> Budget:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _context.pop(self)
        if self._shared_groups:
            await sharing.asend_settles(self._shared_groups)

    def _attach(self, parent: Budget | None) -> None:
        """Fix the budget's place in a tree (under ``_ATTACH_LOCK``; once)."""
        if parent is None:
            self._attached = True
            return
        with parent._lock:
            self.parent = parent
            self._chain = (self, *parent._chain)
            self._accounts = (self._account, *parent._accounts)
            self._chain_fallback = self._chain_fallback or parent._chain_fallback
            if self._wait is _UNSET:
                self._patience = parent._patience
            self._born = min(self._born, parent._born)
            self._shared_groups = sharing.groups(self._chain)
            self._table_prices = {}
            self._root = parent._root
            self._tree = parent._tree
            self._lock = parent._lock
            parent._children.append(self)
            self._attached = True

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function: each call runs inside a fresh budget with this configuration.

        Sync and async functions, and generator functions (sync or async), whose body runs inside the fresh
        budget at every step.
        """
        from ._decorate import decorate

        return decorate(self.fresh, fn)

    def fresh(self) -> Budget:
        """A new, unentered budget with the same configuration and nothing spent."""
        return Budget(**self._config)

    # ---------------------------------------------------------------- pricing
    def price_for(self, model: str | None, provider: str | None = None) -> Price | None:
        """The price a call to ``model`` on ``provider`` is charged at, or None when no price is known.

        This budget's prices, else the nearest ancestor's, then pricing files (``pricing=``, innermost first,
        then ``SHEKEL_PRICING``), then the bundled Hugging Face data. ``provider`` is an Inference Provider
        name, ``"auto"`` (the highest price among the providers known for the model), or None for a
        self-hosted endpoint, which the bundled data cannot price.
        """
        key = (model, provider)
        cache = self._table_prices
        try:
            price = cache[key]
        except KeyError:
            price = resolve_in_tables(self._price_tables(), model, provider)
            if len(cache) >= _PRICE_CACHE_SIZE:
                cache.clear()
            cache[key] = price
        except TypeError:  # an unhashable model id: nothing to cache
            price = resolve_in_tables(self._price_tables(), model, provider)
        # The bundled data is looked up every time: it changes with the date and genai-prices updates.
        return price if price is not None else resolve_bundled(model, provider)

    def _price_tables(self) -> list[PriceTable]:
        tables = [b._prices for b in self._chain if b._prices is not None]
        tables += [b._file_prices for b in self._chain if b._file_prices is not None]
        if self._env_prices is not None:
            tables.append(self._env_prices)
        return tables

    def _unknown_policy(self) -> str:
        for budget in self._chain:
            if budget._on_unknown is not None:
                return budget._on_unknown
        return "warn"

    def _has_limit(self) -> bool:
        return any(b._cap_usd is not None for b in self._chain)

    def _fallback_due(self) -> str | None:
        for budget in self._chain:
            cap = budget._cap_usd
            if budget._fallback_model is not None and cap is not None:
                part = budget._shared
                spent = budget._account.spent if part is None else from_nano(part.seen.spent)
                if spent >= budget._fallback_at * cap:
                    return budget._fallback_model
        return None

    def _any_fallback(self) -> str | None:
        for budget in self._chain:
            if budget._fallback_model is not None:
                return budget._fallback_model
        return None

    # ---------------------------------------------------------------- reserving
    def reserve(
        self,
        *,
        model: str | None,
        prompt_tokens: int,
        max_tokens: int | None,
        max_tokens_ceiling: int = DEFAULT_MAX_TOKENS_CEILING,
        provider: str | None = None,
    ) -> Reservation:
        """Hold the worst-case cost of one call on this budget and every ancestor, atomically.

        ``prompt_tokens`` must err high. When ``max_tokens`` is None and a cap applies, the reservation grants
        the most output tokens the budget can pay for (at most ``max_tokens_ceiling``); the caller must send
        that value. When the call does not fit only because calls in flight hold the room, it waits for them
        (up to the budget's ``wait``, blocking this thread; from asyncio use :meth:`areserve_call`). Raises
        :class:`BudgetExceededError` when the call cannot be paid for; then nothing is held. Fallback models
        take over once their share of the budget is spent, or when only they fit. With
        ``on_unknown_price="raise"`` a call without a price raises :class:`PricingError` here, before
        anything is sent.
        """
        return self.reserve_call((model, prompt_tokens, max_tokens, max_tokens_ceiling, provider))

    def reserve_call(
        self,
        ask: tuple[str | None, int, int | None, int, str | None],
        _local: bool = False,
        media: str | None = None,
    ) -> Reservation:
        """:meth:`reserve`, for adapters: ``ask`` is (model, prompt_tokens, max_tokens, ceiling, provider).

        ``media`` names a media task (``"text-to-image"``): priced by the ``per_call`` part of the model's
        price only, and unpriced when it has none (never a silent $0 at a token price)."""
        context = getcontext()  # exact_money, inline: this runs on every counted call
        if context.prec < MONEY_PRECISION or context.traps[Inexact] or context.traps[Rounded]:
            with localcontext(MONEY_CONTEXT):
                return self.reserve_call(ask, _local, media)
        if self._shared_groups and not _local:
            return self._reserve_shared(ask, media)
        tree = self._tree
        refusal: NoRoom | None = None
        with tree.lock:
            if not tree.waiters:
                try:
                    if self._chain_fallback or self._born < _generation or media is not None:
                        reservation = self._take(*ask, None, media=media)
                    else:  # _take's usual case, inline
                        reservation = self._hold(ask[0], ask[1], ask[2], ask[3], None, ask[4], None)
                except NoRoom as no_room:
                    refusal = no_room
                else:
                    if reservation.price is None:
                        self._after_unpriced(reservation)
                    return reservation
        waiting = _Waiting(ask, None, refusal)
        waiting.media = media
        try:
            while True:
                reservation_or_timeout = self._step(waiting)
                if isinstance(reservation_or_timeout, Reservation):
                    break
                assert waiting.event is not None
                waiting.event.wait(reservation_or_timeout)
        finally:
            self._leave(waiting)
        if reservation_or_timeout.price is None:
            self._after_unpriced(reservation_or_timeout)
        return reservation_or_timeout

    async def areserve_call(
        self,
        ask: tuple[str | None, int, int | None, int, str | None],
        task: object = None,
        _local: bool = False,
        media: str | None = None,
    ) -> Reservation:
        """:meth:`reserve_call` for asyncio: a call that waits for room awaits, never blocking the event loop.

        ``task`` is the asyncio task making the call (it never waits for room it holds itself).
        """
        import asyncio

        if self._shared_groups and not _local:
            return await self._areserve_shared(ask, task, media)
        waiting = _Waiting(ask, task, None, asyncio.get_running_loop())
        waiting.media = media
        try:
            while True:
                reservation_or_timeout = self._step_exactly(waiting)
                if isinstance(reservation_or_timeout, Reservation):
                    break
                assert waiting.future is not None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiting.future, reservation_or_timeout)
        finally:
            self._leave(waiting)
        if reservation_or_timeout.price is None:
            self._after_unpriced(reservation_or_timeout)
        return reservation_or_timeout

    # ---------------------------------------------------------------- shared budgets
    def _reserve_shared(
        self, ask: tuple[str | None, int, int | None, int, str | None], media: str | None = None
    ) -> Reservation:
        """Hold a call on a chain with shared budgets: this process's budgets, then each store's, polling a
        store with backoff while other processes' calls hold the room there."""
        attempt = _SharedAttempt(ask)
        while True:
            reservation = self.reserve_call(attempt.ask, _local=True, media=media)
            try:
                sharing.take_holds(reservation, attempt.patient)
                return attempt.done(reservation)
            except StoreNoRoom as no_room:
                self._release_locked_safely(reservation)
                pause = self._shared_next(no_room, attempt, _event_loop_running())
                if pause:
                    time.sleep(pause)
            except BaseException:
                self._release_locked_safely(reservation)
                raise

    async def _areserve_shared(
        self, ask: tuple[str | None, int, int | None, int, str | None], task: object, media: str | None = None
    ) -> Reservation:
        import asyncio

        attempt = _SharedAttempt(ask)
        while True:
            reservation = await self.areserve_call(attempt.ask, task, _local=True, media=media)
            reservation.defer = True  # settled in a task the async caller awaits: never blocks the loop
            try:
                await sharing.atake_holds(reservation, attempt.patient)
                return attempt.done(reservation)
            except StoreNoRoom as no_room:
                self._release_locked_safely(reservation)
                pause = self._shared_next(no_room, attempt, False)
                if pause:
                    await asyncio.sleep(pause)
            except BaseException:
                self._release_locked_safely(reservation)
                raise

    def _shared_next(self, no_room: StoreNoRoom, attempt: _SharedAttempt, in_loop: bool) -> float:
        """After a store refused: how long to wait before asking again (0: at once, asking for less), or
        the refusal when nothing can help."""
        waited = time.monotonic() - attempt.started
        left = None if self._patience is None else self._patience - waited
        patient = self._patience != 0 and not in_loop and (left is None or left > 0)
        if patient and no_room.waitable:
            pause = attempt.delay if left is None else min(attempt.delay, left)
            attempt.delay, attempt.slept = min(attempt.delay * 2, sharing.POLL_LONGEST), True
            return pause
        if attempt.patient and attempt.ask[2] is None:
            attempt.patient = False  # shekel's max_tokens: take what fits now rather than nothing
            return 0.0
        fallback = self._any_fallback() if self._chain_fallback else None
        model = attempt.ask[0]
        if (
            no_room.reason == "usd"
            and fallback is not None
            and attempt.fallback_from is None
            and fallback != model
        ):
            attempt.fallback_from = model  # only the cheaper model fits
            attempt.ask = (fallback, *attempt.ask[1:])
            return 0.0
        raise self._refused_shared(no_room, waited if attempt.slept else None, model)

    def _refused_shared(
        self, no_room: StoreNoRoom, waited: float | None, model: str | None
    ) -> BudgetExceededError:
        # The budget of that name in the store that refused; of two there (nested), the one whose limit is hit.
        named = [
            b for b in no_room.members or self._chain if b._name == no_room.name and b._shared is not None
        ]
        cap = {"usd": "_cap_usd", "calls": "_cap_calls", "tokens": "_cap_tokens"}.get(
            no_room.reason, "_cap_usd"
        )
        limited = [b for b in named if getattr(b, cap) is not None]
        member = min(limited, key=lambda b: getattr(b, cap)) if limited else named[0] if named else self
        figures = no_room.figures
        where = ""
        if member._shared is not None and not member._shared.private:
            where = f" (shared, in {member._shared.store.display}"
            where += ", which is down: this process's own share)" if no_room.down else ")"
        return self._emit_refusal(
            BudgetExceededError(
                budget_name=member.path + where,
                spent=from_nano(figures.spent),
                limit=member._cap_usd,
                model=redact_model(model),
                needed=from_nano(no_room.needed),
                reason=no_room.reason,
                calls=figures.calls + figures.failed + figures.inflight,
                max_calls=member._cap_calls,
                reserved=from_nano(figures.reserved),
                waited=waited,
            ),
            model,
        )

    def _release_locked_safely(self, reservation: Reservation) -> None:
        with self._lock:
            self._release_locked(reservation)

    def _take_grant(self, reservation: Reservation, max_tokens: int) -> None:
        """A store sized the call (the caller gave no ``max_tokens``) at ``max_tokens`` output tokens: the call
        sends that many, and this process's budgets hold for that many. Fewer than they held: they hold less.
        None held (no budget of this process bounds the call: its limits are the store's): they hold the
        output too, as the store does, so that the call is charged alike if its answer is lost."""
        if reservation.max_tokens is None:
            output = max_tokens + OUTPUT_MARGIN_TOKENS
            fewer = -output  # more, as the store holds
        elif max_tokens < reservation.max_tokens:
            fewer = reservation.max_tokens - max_tokens
        else:
            return
        money = ZERO if reservation.price is None else reservation.price.output_per_token * fewer
        tokens = fewer if reservation.tokens else 0
        with self._lock:
            for account in reservation.chain[0]._accounts:
                account.reserved -= money
                account.reserved_tokens -= tokens
            reservation.cost -= money
            reservation.tokens -= tokens
            reservation.max_tokens = max_tokens
            if self._tree.waiters:
                self._tree.wake()

    def _view(self) -> Account:
        """The budget's figures: its account here, or (shared) its figures in the store, across processes."""
        part = self._shared
        if part is None:
            return self._account
        view = Account(self, self._cap_usd, self._cap_calls, self._cap_tokens)
        try:
            figures = sharing.figures(part)
        except StoreError:
            if not part.fail_open:
                raise
            # The store is down: the budget as this process knows it (its figures last seen in the store, and
            # what this process spent since and holds), against the budget's limits.
            with shares.LOCK:
                share = part.seen
                view.spent, view.reserved = from_nano(share.spent), from_nano(share.held_money)
                view.calls, view.failed, view.inflight = share.calls, share.failed, share.held_calls
                view.input_tokens, view.output_tokens = share.input_tokens, share.output_tokens
                view.reserved_tokens = share.held_tokens
            return view
        view.spent, view.reserved = from_nano(figures.spent), from_nano(figures.reserved)
        view.calls, view.failed, view.inflight = figures.calls, figures.failed, figures.inflight
        view.input_tokens, view.output_tokens = figures.input_tokens, figures.output_tokens
        view.reserved_tokens = figures.reserved_tokens
        return view

    def reset(self) -> None:
        """Forget what the budget has spent (and its records): a new start for its limits.

        A shared budget's spend is cleared in its store, for every process; calls in flight keep their
        holds and are charged as they settle. Budgets around this one keep what they were charged. With
        ``on_store_error="open"`` and the store down, only this process's share of the budget is cleared
        (with a warning); otherwise a store that is down raises :class:`shekel.StoreError`.
        """
        part = self._shared
        if part is not None:
            try:
                part.store.reset(part.limits.name)
            except StoreError as error:
                if not part.fail_open:
                    raise
                # on_store_error="open" goes on without the store: the process's share starts again.
                cause = str(error).replace(OPEN_ADVICE, "").rstrip(". ")
                warn_user(
                    f"shekel: budget {self._name!r} was reset in this process only: its store cannot be used "
                    f"({cause}), so its spend there is not cleared. Reset it again once the store answers."
                )
        self._clear()

    def _clear(self) -> None:
        part = self._shared
        if part is not None:
            with shares.LOCK:
                part.seen.clear()
        with self._lock:
            account = self._account
            account.spent = ZERO
            account.calls = account.failed = account.input_tokens = account.output_tokens = 0
            self._own_spent = ZERO
            self._estimated_calls = self._unpriced_calls = 0
            self._unpriced_input_tokens = self._unpriced_output_tokens = 0
            self._warned = False
            self._models.clear()
            self._records.clear()

    @exact_money
    def _step_exactly(self, waiting: _Waiting) -> Reservation | float | None:
        return self._step(waiting)

    def _step(self, waiting: _Waiting) -> Reservation | float | None:
        """One try of a call that may wait: the reservation, or how long to wait before the next try (None:
        until woken). Raises ``BudgetExceededError`` when waiting cannot help or the wait ran out."""
        tree = self._tree
        ask, task = waiting.ask, waiting.task
        waited = waiting.waited() if waiting.waiter is not None else None
        with tree.lock:
            refusal, waiting.refusal = waiting.refusal, None
            blocked: Account | None = None
            if refusal is None:
                if self._patience != 0:  # wait=0 takes no place in the queue: it refuses at once, as it did
                    blocked = tree.blocker(self._accounts, waiting.waiter)
                own = blocked is not None and self._holds_in_flight(task)
                try:
                    reservation = self._take(*ask, task, media=waiting.media)
                except NoRoom as no_room:
                    refusal = no_room
                else:
                    if blocked is None or own:
                        # Free to go; or a caller whose own calls are in flight, which an earlier waiter may
                        # be waiting for: queueing behind it could wait for itself.
                        return reservation
                    self._release_locked(reservation)  # first come, first served: the earlier waiter first
            if refusal is not None:
                if (
                    self._patience == 0
                    or (waiting.loop is None and _event_loop_running())
                    or not self._waitable(refusal, task)
                ):
                    # Waiting cannot help. A call whose max_tokens is shekel's to choose, and which cannot
                    # wait for the room its own calls hold, takes what fits now rather than nothing.
                    if ask[2] is None and self._patience != 0:
                        try:
                            return self._take(*ask, task, patient=False, media=waiting.media)
                        except NoRoom:
                            pass
                    raise self._refused(refusal, waited=waited)
                blocked = refusal.account
            assert blocked is not None
            timeout = waiting.time_left(self._patience)
            if timeout is not None and timeout <= 0:
                # The wait ran out: one last try, then the refusal says how long it waited.
                try:
                    return self._take(*ask, task, media=waiting.media)
                except NoRoom as no_room:
                    raise self._refused(no_room, waited=waiting.waited()) from None
            waiting.enqueue(tree, self._accounts, blocked)
            return timeout

    def _holds_in_flight(self, task: object) -> bool:
        """Whether this thread (and ``task``, when given) has calls in flight in the tree (lock held)."""
        thread = threading.get_ident()
        return any(
            held.thread == thread and (task is None or held.task is None or held.task is task)
            for held in self._tree.holds
        )

    def _leave(self, waiting: _Waiting) -> None:
        waiter = waiting.waiter
        if waiter is None:
            return
        tree = self._tree
        with tree.lock:
            if waiter in tree.waiters:
                tree.waiters.remove(waiter)
                tree.wake()

    def _take(
        self,
        model: str | None,
        prompt_tokens: int,
        max_tokens: int | None,
        ceiling: int,
        provider: str | None,
        task: object,
        patient: bool | None = None,
        media: str | None = None,
    ) -> Reservation:
        """Hold the call now, with a fallback model where one is due or only it fits (lock held).

        ``patient``: size a call whose ``max_tokens`` is shekel's to choose against what is not spent (it will
        wait for calls in flight) or, when False, against what is neither spent nor held."""
        if self._born < _generation:
            self._refuse_inherited()
        if self._chain_fallback:
            fallback = self._fallback_due()
            if fallback is not None and fallback != model:
                return self._hold(
                    fallback, prompt_tokens, max_tokens, ceiling, model, provider, task, patient, media
                )
            try:
                return self._hold(
                    model, prompt_tokens, max_tokens, ceiling, None, provider, task, patient, media
                )
            except NoRoom as no_room:
                fallback = self._any_fallback()
                if no_room.reason != "usd" or fallback is None or fallback == model:
                    raise
                if self._patience != 0 and patient is not False and self._waitable(no_room, task):
                    raise  # the model asked for fits once calls in flight settle: wait for it
                return self._hold(
                    fallback, prompt_tokens, max_tokens, ceiling, model, provider, task, patient, media
                )
        return self._hold(model, prompt_tokens, max_tokens, ceiling, None, provider, task, patient, media)

    def _hold(
        self,
        model: str | None,
        prompt_tokens: int,
        max_tokens: int | None,
        ceiling: int,
        fallback_from: str | None,
        provider: str | None,
        task: object,
        patient: bool | None = None,
        media: str | None = None,
    ) -> Reservation:
        price = self.price_for(model, provider)
        if media is not None and price is not None and price.per_call is None:
            price = None  # a token price cannot price an image: unpriced, never a silent $0
        if price is None:
            if self._unknown_policy() == "raise":
                raise self._emit_refusal(
                    PricingError(
                        "shekel refused the call before sending it (on_unknown_price='raise'): "
                        + unknown_price_message(redact_model(model), provider, self.path, media)
                    ),
                    model,
                )
            input_cost = output_price = ZERO
        else:
            # A prompt written to the provider's cache may cost more per token than plain input.
            input_cost = price.worst_input_cost(prompt_tokens)
            output_price = price.output_per_token
        try:
            granted, cost, tokens = ledger.hold(
                self._accounts,
                input_cost,
                output_price,
                prompt_tokens,
                max_tokens,
                ceiling,
                self._patience != 0 if patient is None else patient,
            )
        except NoRoom as no_room:
            no_room.ask = (input_cost, output_price, prompt_tokens, max_tokens, model)
            raise
        reservation = Reservation(
            self._chain,
            cost,
            model,
            price,
            granted,
            fallback_from,
            provider,
            tokens,
            prompt_tokens,
            threading.get_ident(),
            task,
            max_tokens is None,
            ceiling,
        )
        if media is not None:
            reservation.media = media
        self._tree.holds[reservation] = None
        if events._listeners:
            reservation.started = time.monotonic()
            events.emit(events.Reserved(reservation.chain))
        return reservation

    def _waitable(self, refusal: NoRoom, task: object) -> bool:
        """Whether the call fits once calls in flight (other than the caller's own) settle (lock held)."""
        assert refusal.ask is not None
        input_cost, output_price, prompt_tokens, max_tokens, _ = refusal.ask
        own, others = self._own_holds(task)
        if not others:
            return False  # nothing in flight that could make room
        return ledger.fits_without_others(
            self._accounts, input_cost, output_price, prompt_tokens, max_tokens, own
        )

    def _own_holds(self, task: object) -> tuple[dict[Account, tuple[Decimal, int, int]], bool]:
        """What calls in flight of this thread (and ``task``, when given) hold, per account; and whether
        calls of others are in flight too (lock held)."""
        thread = threading.get_ident()
        own: dict[Account, tuple[Decimal, int, int]] = {}
        others = False
        for held in self._tree.holds:
            if held.thread == thread and (task is None or held.task is None or held.task is task):
                for account in held.chain[0]._accounts:
                    money, tokens, calls = own.get(account, (ZERO, 0, 0))
                    own[account] = (money + held.cost, tokens + held.tokens, calls + 1)
            else:
                others = True
        return own, others

    def _refused(self, refusal: NoRoom, waited: float | None = None) -> BudgetExceededError:
        account = refusal.account
        model = refusal.ask[4] if refusal.ask is not None else None
        return self._emit_refusal(
            BudgetExceededError(
                budget_name=account.budget.path,
                spent=account.spent,
                limit=account.limit,
                model=redact_model(model),
                needed=refusal.needed,
                reason=refusal.reason,
                calls=account.calls + account.failed + account.inflight,
                max_calls=account.max_calls,
                reserved=account.reserved,
                waited=waited,
            ),
            model,
        )

    def _emit_refusal(self, error: E, model: str | None) -> E:
        if events._listeners:
            events.emit(events.Refused(error, self, redact_model(model)))
        return error

    def _refuse_inherited(self) -> NoReturn:
        raise ForkedBudgetError(
            f"budget {self.path!r} was created before this process (pid {os.getpid()}) was forked from its "
            "parent: spending it here would spend a private copy of the cap that the other processes never "
            "see. Share one cap between processes with a shared store: budget(max_usd=..., name='job', "
            "store='sqlite:///budgets.db'), or create the budget inside the worker process."
        )

    def _after_unpriced(self, reservation: Reservation) -> None:
        """Warn once per model that calls without a price cost $0, so ``max_usd`` cannot stop them."""
        model = reservation.model
        with self._lock:
            if (
                not self._has_limit()
                or self._unknown_policy() != "warn"
                or model in self._root._unpriced_warned
            ):
                return
            self._root._unpriced_warned.add(model)
        try:
            warn_user(
                "shekel: "
                f"{unknown_price_message(redact_model(model), reservation.provider, self.path, reservation.media)} "
                "Until then its calls are counted in tokens but cost $0, so max_usd cannot stop them."
            )
        except BaseException:  # a warning turned error (-W error): the call is not sent, so it holds nothing
            self.release(reservation)
            raise

    def check_price(self, model: str | None) -> None:
        """Apply ``on_unknown_price`` to a call no adapter sees (an integration counting a model whose client
        shekel does not patch), before it is sent: raise :class:`PricingError` with ``"raise"``, warn once per
        model with ``"warn"`` (when the budget has a ``max_usd``), nothing with ``"zero"`` or a known price."""
        if self.price_for(model) is not None:
            return
        policy = self._unknown_policy()
        if policy == "raise":
            raise self._emit_refusal(
                PricingError(
                    "shekel refused the call before sending it (on_unknown_price='raise'): "
                    + unknown_price_message(redact_model(model), None, self.path)
                ),
                model,
            )
        with self._lock:
            if policy != "warn" or not self._has_limit() or model in self._root._unpriced_warned:
                return
            self._root._unpriced_warned.add(model)
        warn_user(
            f"shekel: {unknown_price_message(redact_model(model), None, self.path)} "
            "Until then its calls are counted in tokens but cost $0, so max_usd cannot stop them."
        )

    @exact_money
    def check(self, *, model: str | None, prompt_tokens: int, max_tokens: int | None) -> None:
        """Raise :class:`BudgetExceededError` if a call like this could not be paid for now; hold nothing.

        For a layer that wants to refuse work before it starts (an integration's chain or query). It never
        warns about prices and never raises :class:`PricingError` (the call itself does that). A budget that
        waits (``wait`` > 0) refuses here only what calls in flight settling could not make room for.
        """
        with self._lock:
            try:
                if self._patience != 0:
                    price = self.price_for(model)
                    input_cost = ZERO if price is None else price.input_per_token * prompt_tokens
                    output_price = ZERO if price is None else price.output_per_token
                    own, _ = self._own_holds(None)
                    ledger.check_unheld(
                        self._accounts, input_cost, output_price, prompt_tokens, max_tokens, own
                    )
                    return
                reservation = self._hold(
                    model, prompt_tokens, max_tokens, DEFAULT_MAX_TOKENS_CEILING, None, None, None
                )
            except PricingError:
                return
            except NoRoom as no_room:
                raise self._refused(no_room) from None
            self._release_locked(reservation)

    def room(self) -> tuple[Budget, Decimal] | None:
        """The capped budget of the chain with the least money neither spent nor held, and that amount."""
        with self._lock:
            tightest: tuple[Budget, Decimal] | None = None
            for account in self._accounts:
                if account.limit is None:
                    continue
                left = account.limit - account.spent - account.reserved
                if tightest is None or left < tightest[1]:
                    tightest = (account.budget, left)
            return tightest

    def unreserved(self, *, model: str | None, max_tokens: int | None = None) -> Reservation:
        """A reservation holding nothing, for a call that was made without one (an integration learning of
        it only after it ran): settling it charges the call on every budget of the chain."""
        with self._lock:
            for account in self._accounts:
                account.inflight += 1
            reservation = Reservation(
                self._chain,
                ZERO,
                model,
                self.price_for(model),
                max_tokens,
                None,
                thread=threading.get_ident(),
            )
            self._tree.holds[reservation] = None
        if self._shared_groups:  # charged in the stores on settle, as a hold they never saw
            reservation.shared = sharing.unheld(self._shared_groups)
        return reservation

    # ---------------------------------------------------------------- releasing and settling
    @exact_money
    def release(self, reservation: Reservation) -> None:
        """Give back everything a call held: it was never sent, so it costs nothing and counts nowhere."""
        with self._lock:
            self._release_locked(reservation)

    def _release_locked(self, reservation: Reservation) -> None:
        tree = reservation.chain[0]._tree
        if tree.holds.pop(reservation, _GONE) is _GONE:
            return  # released or settled already
        ledger.release(reservation.chain[0]._accounts, reservation.cost, reservation.tokens)
        if tree.waiters:
            tree.wake()
        if reservation.shared or reservation.share_holds:
            sharing.release(reservation)
            reservation.shared = ()

    def settle(
        self,
        reservation: Reservation,
        usage: Usage,
        *,
        streamed: bool,
        source: str,
        label: str | None = None,
        provider: str | None = None,
        outcome: str = OK,
        note: str | None = None,
    ) -> Decimal:
        """Charge a finished call at its real usage on every budget that held it, release the rest.

        ``label`` names the model in records when the priced id is unknown (a URL endpoint, say). Returns the
        cost charged. Warnings (``warn_at``) fire after the ledger is updated, outside the lock. ``provider``
        is the Inference Provider that served the call, when the answer said so: the call is charged at its
        price (an auto-routed call was reserved at the highest one). ``outcome`` is ``"ok"``; ``"error"`` for
        an error answer (charged nothing; counted as a failed request); ``"unknown"`` when the request left
        and no answer came back (charged what it held, since the provider most likely did the work).
        """
        context = getcontext()  # exact_money, inline: this runs on every counted call
        if context.prec < MONEY_PRECISION or context.traps[Inexact] or context.traps[Rounded]:
            with localcontext(MONEY_CONTEXT):
                return self.settle(
                    reservation,
                    usage,
                    streamed=streamed,
                    source=source,
                    label=label,
                    provider=provider,
                    outcome=outcome,
                    note=note,
                )
        notes: list[str]
        if provider is None or provider == reservation.provider:  # _settle_price's usual case, inline
            price, served, notes = reservation.price, reservation.provider, []
        else:
            price, served, notes = self._settle_price(reservation, provider)
        if outcome == OK:
            cached = usage.cached_input_tokens
            if cached:
                cached = min(cached, usage.input_tokens)
            if cached and price is not None and price.cached_input_per_token is None:
                notes.append(
                    f"{cached} cached input tokens were charged at the full input price: the price has no "
                    "cached-input part"
                )
            allowed = reservation.max_tokens
            if allowed is not None and usage.output_tokens > allowed + OUTPUT_MARGIN_TOKENS:
                # Charged as reported: the ledger mirrors what the provider bills, even past the cap.
                notes.append(
                    f"the server reported {usage.output_tokens} output tokens for a request allowed {allowed}; "
                    "charged as reported"
                )
            if (
                usage.input_tokens > reservation.prompt_tokens
                and not usage.estimated
                and reservation.prompt_tokens
            ):
                notes.append(
                    f"the server reported {usage.input_tokens} input tokens for a prompt estimated at most "
                    f"{reservation.prompt_tokens}; charged as reported"
                )
            cost = (
                ZERO
                if price is None
                else price.cost(usage.input_tokens, usage.output_tokens, cached, usage.cache_write_tokens)
            )
            if note:
                notes.append(note)
        elif outcome == ERROR:
            usage = Usage(0, 0)
            cost = ZERO
            notes.append("the server answered with an error: not charged, counted as a failed request")
        elif outcome == UNKNOWN:
            # ``usage`` is what the call held (``CallAccounting.held_usage``): its cost is the reservation's
            # at the reserved price, or less at the price of the provider that answered.
            cost = ZERO if price is None else price.cost(usage.input_tokens, usage.output_tokens)
            notes.append(
                note
                or "no answer came back after the request was sent (a timeout, a dropped connection or a "
                "cancellation): charged what the call held, since the provider most likely did the work"
            )
        else:
            raise ValueError(f"outcome must be 'ok', 'error' or 'unknown', got {outcome!r}")
        model = reservation.model if reservation.model is not None else label
        if reservation.fallback_from is not None:
            model = redact_model(model)
        record: RecordFields = (  # CallRecord's fields, in order
            model,
            usage.input_tokens,
            usage.output_tokens,
            cost,
            usage.estimated,
            price is not None,
            streamed,
            source,
            reservation.fallback_from,
            time.time(),
            served,
            None if price is None else price.source,
            tuple(notes),
            outcome,
        )
        to_warn: list[Budget] = []
        chain = reservation.chain
        tree = chain[0]._tree
        with tree.lock:
            try:
                del tree.holds[reservation]
            except KeyError:
                return ZERO  # settled or released already: never charged twice
            ledger.settle(
                chain[0]._accounts,
                reservation.cost,
                reservation.tokens,
                cost,
                usage.input_tokens,
                usage.output_tokens,
                outcome,
            )
            answered = outcome == OK
            for budget in chain:
                try:
                    totals = budget._models[model]
                except KeyError:
                    totals = budget._models[model] = ModelTotals()
                if answered:
                    totals.calls += 1
                else:
                    totals.failed_calls += 1
                totals.input_tokens += usage.input_tokens
                totals.output_tokens += usage.output_tokens
                totals.cost += cost
                if served is not None and served not in totals.providers:
                    totals.providers.add(served)
                if usage.estimated:
                    budget._estimated_calls += 1
                    totals.estimated_calls += 1
                if price is None and answered:
                    budget._unpriced_calls += 1
                    budget._unpriced_input_tokens += usage.input_tokens
                    budget._unpriced_output_tokens += usage.output_tokens
                    totals.unpriced_calls += 1
                if budget._warn_at is not None and not budget._warned:
                    cap = budget._cap_usd
                    part = budget._shared
                    spent = budget._account.spent if part is None else from_nano(part.seen.spent) + cost
                    if cap is not None and spent >= budget._warn_at * cap:
                        budget._warned = True
                        to_warn.append(budget)
            owner = chain[0]
            owner._own_spent += cost
            owner._records.append(record)
            if tree.waiters:
                tree.wake()
        if reservation.shared or reservation.share_holds:
            sharing.settle(
                reservation,
                Charge(
                    nano_up(cost),
                    usage.input_tokens,
                    usage.output_tokens,
                    outcome,
                    model,
                    served,
                    usage.estimated,
                    chain[0].path,
                ),
            )
        if events._listeners:
            events.emit(
                events.Settled(
                    CallRecord(*record),
                    chain,
                    reservation.cost,
                    time.monotonic() - reservation.started if reservation.started else 0.0,
                )
            )
        for budget in to_warn:
            budget._fire_warning()
        return cost

    def _settle_price(
        self, reservation: Reservation, provider: str | None
    ) -> tuple[Price | None, str | None, list[str]]:
        if provider is None or provider == reservation.provider:
            return reservation.price, reservation.provider, []
        price = reservation.chain[0].price_for(reservation.model, provider)
        if reservation.media is not None and price is not None and price.per_call is None:
            price = None
        reserved = reservation.price
        if price is None:
            if reserved is None:
                return None, provider, []
            return (
                reserved,
                provider,
                [
                    f"served by {provider!r}, which has no known price: charged at the price it was reserved at"
                ],
            )
        # Never settle above what was reserved: the cap was checked at the reserved price. A call reserved
        # unpriced (a gateway in front of the router, say) stays unpriced, and says what it would have cost.
        if reserved is None:
            return (
                None,
                provider,
                [
                    f"served by {provider!r} at {price}, not charged: the call was sent without a "
                    "price, so the cap could not hold it. Give this endpoint a price (price_per_1k_tokens, "
                    "a pricing file, or the client's provider=) to have such calls counted."
                ],
            )
        per_call = _lower_per_call(price.per_call, reserved.per_call)
        if (
            price.input_per_token > reserved.input_per_token
            or price.output_per_token > reserved.output_per_token
            or per_call != price.per_call
        ):
            asked = reservation.provider
            asked_text = f" (the call asked for {asked!r})" if asked is not None else ""
            return (
                Price(
                    min(price.input_per_token, reserved.input_per_token),
                    min(price.output_per_token, reserved.output_per_token),
                    f"{price.source}, capped at the price the call was reserved at{asked_text}",
                    reserved.cached_input_per_token
                    if price.cached_input_per_token is None
                    else price.cached_input_per_token
                    if reserved.cached_input_per_token is None
                    else min(price.cached_input_per_token, reserved.cached_input_per_token),
                    provider,
                    None
                    if price.cache_write_per_token is None or reserved.cache_write_per_token is None
                    else min(price.cache_write_per_token, reserved.cache_write_per_token),
                    per_call=per_call,
                ),
                provider,
                [
                    f"served by {provider!r} at {price}, above the price reserved{asked_text}: each part "
                    "charged at the lower of the two"
                ],
            )
        return price, provider, []

    def _fire_warning(self) -> None:
        account = self._view()
        assert account.limit is not None
        if self._on_warn is not None:
            self._on_warn(float(account.spent), float(account.limit))
            return
        warn_user(
            f"shekel: budget {self.path!r} has spent ${account.spent} of ${account.limit} "
            f"({account.spent / account.limit:.0%}), past its warn_at of {self._warn_at:.0%}."
        )

    # ---------------------------------------------------------------- reports
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot: totals, per-model aggregates, recent call records and child budgets."""
        root = self._own_dict(self.path)
        stack = [root]
        while stack:  # children are walked without recursion: trees may be deep
            snapshot = stack.pop()
            budget: Budget = snapshot.pop("_budget")
            for child in budget.children:
                child_snapshot = child._own_dict(f"{snapshot['path']}/{child._name}")
                snapshot["children"].append(child_snapshot)
                stack.append(child_snapshot)
        return root

    def _own_dict(self, path: str) -> dict[str, Any]:
        account = self._view()
        part = self._shared
        with self._lock:
            return {
                "store": None if part is None else part.store.display,
                "window": None if part is None else part.limits.window.spec,
                "_budget": self,
                "name": self._name,
                "path": path,
                "limit_usd": None if account.limit is None else str(account.limit),
                "spent_usd": str(account.spent),
                "own_spent_usd": str(self._own_spent),
                "reserved_usd": str(account.reserved),
                "calls": account.calls,
                "failed_calls": account.failed,
                "calls_in_flight": account.inflight,
                "max_llm_calls": account.max_calls,
                "max_total_tokens": account.max_tokens,
                "input_tokens": account.input_tokens,
                "output_tokens": account.output_tokens,
                "estimated_calls": self._estimated_calls,
                "unpriced_calls": self._unpriced_calls,
                "unpriced_input_tokens": self._unpriced_input_tokens,
                "unpriced_output_tokens": self._unpriced_output_tokens,
                "models": {str(m): totals_dict(t) for m, t in self._models.items()},
                "records": [record_dict(CallRecord(*fields)) for fields in self._records],
                "children": [],
            }

    @exact_money
    def summary(self) -> str:
        """A readable table of this budget: totals, per model, per provider, per child budget, and unpriced
        calls."""
        from ._report import render_summary

        return render_summary(self.to_dict())


_GONE: Any = object()


def _lower_per_call(served: Decimal | None, reserved: Decimal | None) -> Decimal | None:
    """The per-call part a call served at ``served`` is charged: never more than it was reserved at."""
    if served is None:
        return None
    return ZERO if reserved is None else min(served, reserved)


def _copy_totals(totals: ModelTotals) -> ModelTotals:
    copy = ModelTotals(**{k: getattr(totals, k) for k in totals.__slots__})
    copy.providers = set(totals.providers)
    return copy


def _event_loop_running() -> bool:
    """Whether this thread runs an asyncio event loop: a sync wait there would stop the tasks whose calls
    could make room (a framework's callback reserving inside async code), so the call is refused at once."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _SharedAttempt:
    """One call's tries at the stores of its shared budgets."""

    __slots__ = ("ask", "delay", "fallback_from", "patient", "slept", "started")

    def __init__(self, ask: tuple[str | None, int, int | None, int, str | None]) -> None:
        self.ask = ask
        self.started = time.monotonic()
        self.delay = sharing.POLL_FIRST
        self.slept = False
        self.patient = True
        self.fallback_from: str | None = None

    def done(self, reservation: Reservation) -> Reservation:
        if self.fallback_from is not None and reservation.fallback_from is None:
            reservation.fallback_from = self.fallback_from
        return reservation


class _Waiting:
    """The state of one call that may wait for room: what it asks, its place in the queue, its clock."""

    __slots__ = ("ask", "event", "future", "loop", "media", "refusal", "started", "task", "waiter")

    def __init__(
        self,
        ask: tuple[str | None, int, int | None, int, str | None],
        task: object,
        refusal: NoRoom | None,
        loop: Any = None,
    ) -> None:
        self.ask = ask
        self.task = task
        self.refusal = refusal
        self.loop = loop
        self.started = time.monotonic()
        self.waiter: Waiter | None = None
        self.event: threading.Event | None = None
        self.future: Any = None
        self.media: str | None = None

    def waited(self) -> float:
        return time.monotonic() - self.started

    def time_left(self, patience: float | None) -> float | None:
        return None if patience is None else patience - self.waited()

    def enqueue(self, tree: Tree, accounts: tuple[Account, ...], blocked: Account) -> None:
        """Join (or stay in) the queue, blocked on ``blocked``; arm the event or future a wake sets."""
        waiter = self.waiter
        if waiter is None:
            waiter = self.waiter = Waiter(accounts, blocked)
            tree.waiters.append(waiter)
        else:
            waiter.blocked = blocked
        if self.loop is None:
            if self.event is None:
                self.event = waiter.event = threading.Event()
            self.event.clear()
        else:
            self.future = waiter.future = self.loop.create_future()
            waiter.loop = self.loop


def budget(
    max_usd: float | Decimal | int | None = None,
    *,
    name: str | None = None,
    price_per_1k_tokens: Mapping[str, Any] | None = None,
    warn_at: float | None = None,
    on_warn: Callable[[float, float], object] | None = None,
    fallback: Mapping[str, Any] | None = None,
    max_llm_calls: int | None = None,
    pricing: str | os.PathLike[str] | None = None,
    on_unknown_price: str | None = None,
    max_total_tokens: int | None = None,
    wait: float | None = _UNSET,
    store: str | Store | None = None,
    window: float | str | None = None,
    lease: float = _UNSET,
    on_store_error: str = _UNSET,
) -> Budget:
    """Create a :class:`Budget`: a hard spending cap for the LLM calls made inside it.

    Args:
        max_usd: The dollar cap. A call whose worst-case cost does not fit is refused before it is sent.
        name: Shown in errors and reports.
        price_per_1k_tokens: ``{"input": x, "output": y}`` USD per 1,000 tokens for every model, or a mapping
            from model id to such a dict, with ``"*"`` as the default. Without it, a nested budget uses its
            parent's prices; with no price at all calls are counted in tokens and cost $0.
        warn_at: A fraction of ``max_usd``; once reached, ``on_warn(spent, limit)`` is called once (or a
            ``UserWarning`` is emitted when no callback is given).
        fallback: ``{"at_pct": 0.8, "model": "cheaper/model"}``: once ``at_pct`` of the cap is spent, later
            calls use the cheaper model.
        max_llm_calls: The most LLM calls the budget (with its children) may make. Every request sent
            counts, including those that failed.
        pricing: A TOML or JSON pricing file (see docs/pricing.md), used after ``price_per_1k_tokens`` and
            before the bundled Hugging Face prices. ``SHEKEL_PRICING`` names one for every budget.
        on_unknown_price: ``"warn"`` (the default: warn once per model, count tokens, charge $0),
            ``"raise"`` (refuse the call with :class:`PricingError` before it is sent) or ``"zero"``
            (count it as free, silently). Nested budgets inherit it.
        max_total_tokens: The most input plus output tokens the budget (with its children) may use; reserved
            before each call like dollars, so it caps free-tier calls too.
        wait: Seconds a call may wait when it does not fit only because calls in flight hold the room (their
            worst case): it goes ahead once they settle. ``0`` refuses at once; ``None`` waits as long as
            calls are in flight. Nested budgets inherit it; the default is 60.
        store: Share the budget between processes and hosts: a store URL (``"sqlite:///budgets.db"``,
            ``"redis://host:6379/0"``), a store object (``shekel.stores``), or ``"env"`` for ``SHEKEL_STORE``.
            Needs ``name``, the budget's key there. See docs/shared-budgets.md.
        window: For a shared budget, the period its limits apply to: None (until reset), a rolling window
            (``90``, ``"15m"``, ``"24h"``, ``"7d"``) or a calendar one (``"day"``, ``"week"``, ``"month"``, UTC).
        lease: Seconds a hold of a process that died stays held in the store (default 600); it is then
            charged what it held.
        on_store_error: ``"closed"`` (default: refuse calls while the store is down, with
            :class:`shekel.StoreError`) or ``"open"`` (let them go ahead, counted in this process only).
    """
    return Budget(
        max_usd,
        name=name,
        price_per_1k_tokens=price_per_1k_tokens,
        warn_at=warn_at,
        on_warn=on_warn,
        fallback=fallback,
        max_llm_calls=max_llm_calls,
        pricing=pricing,
        on_unknown_price=on_unknown_price,
        max_total_tokens=max_total_tokens,
        wait=wait,
        store=store,
        window=window,
        lease=lease,
        on_store_error=on_store_error,
    )


__all__ = [
    "DEFAULT_MAX_TOKENS_CEILING",
    "MAX_CHILDREN",
    "MAX_RECORDS",
    "OUTPUT_MARGIN_TOKENS",
    "Budget",
    "CallRecord",
    "ModelTotals",
    "Reservation",
    "budget",
]
