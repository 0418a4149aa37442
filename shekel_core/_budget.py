"""The budget: a shared, locked ledger that nests, reserves before a call and settles after it."""

from __future__ import annotations

import inspect
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from . import _context
from ._money import ZERO, exact_money, to_decimal
from ._pricing import (
    Price,
    PriceTable,
    parse_price_table,
    resolve_bundled,
    resolve_in_tables,
    unknown_price_message,
)
from ._pricing_files import env_pricing, load_pricing_file
from ._usage import Usage
from .errors import BudgetConfigError, BudgetExceededError, PricingError

P = ParamSpec("P")
R = TypeVar("R")

#: Output tokens asked for when the caller gave no ``max_tokens`` (capped further by what the budget can pay).
DEFAULT_MAX_TOKENS_CEILING = 4096
#: Extra output tokens reserved per call: some providers report one token more than ``max_tokens``.
OUTPUT_MARGIN_TOKENS = 2
#: Per-call records kept by each budget; older ones are folded into the per-model aggregates only.
MAX_RECORDS = 1000
#: Direct children remembered by each budget for ``summary()``; their spend always reaches the parent.
MAX_CHILDREN = 256
#: (model, provider) pairs whose price from the chain's tables each budget caches.
_PRICE_CACHE_SIZE = 256

_FALLBACK_KEYS = frozenset({"at_pct", "model"})
_UNKNOWN_PRICE_POLICIES = ("warn", "raise", "zero")


@dataclass(slots=True)
class ModelTotals:
    """Aggregates of every call made with one model (in this budget and its children)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = ZERO
    estimated_calls: int = 0
    unpriced_calls: int = 0


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One settled call, as recorded by the budget that was innermost when it was made."""

    model: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    estimated: bool
    priced: bool
    streamed: bool
    source: str
    fallback_from: str | None = None
    at: float = field(default_factory=time.time)
    #: The Inference Provider the call was priced for (the one that served it, when known).
    provider: str | None = None
    #: Where the price came from (a budget, a pricing file, the bundled data).
    price_source: str | None = None
    #: Price parts shekel could not charge exactly (cached input without a cached price, say).
    notes: tuple[str, ...] = ()


#: A ``CallRecord``'s fields, in order, as a budget keeps them: building the frozen record (an
#: ``object.__setattr__`` per field) is left to whoever reads ``records``, not done on every call.
_RecordFields = tuple[
    str | None,
    int,
    int,
    Decimal,
    bool,
    bool,
    bool,
    str,
    str | None,
    float,
    str | None,
    str | None,
    tuple[str, ...],
]


@dataclass(slots=True, unsafe_hash=True)
class Reservation:
    """Money and a call slot held on every budget of ``chain`` for one call in flight.

    It keeps its own reference to the chain, so the call settles on the budgets that paid for it even when
    it finishes after the ``with`` block (an async stream finalised later by the event loop).

    Never changed once made (it is not frozen only because a frozen dataclass sets each field through
    ``object.__setattr__``, on every call); it compares and hashes by value, as a frozen one would.
    """

    chain: tuple[Budget, ...]
    cost: Decimal
    model: str | None
    price: Price | None
    max_tokens: int | None
    fallback_from: str | None
    provider: str | None = None
    tokens: int = 0


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
    ) -> None:
        self._config: dict[str, Any] = {
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
        }
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise BudgetConfigError(f"name must be a non-empty string, got {name!r}.")
        self._name = name if name is not None else "budget"
        self._limit = _validate_limit(max_usd)
        self._prices: PriceTable | None = (
            None
            if price_per_1k_tokens is None
            else parse_price_table(price_per_1k_tokens, budget_name=self._name)
        )
        self._warn_at = _validate_warn_at(warn_at, self._limit)
        if on_warn is not None and not callable(on_warn):
            raise BudgetConfigError(f"on_warn must be callable as on_warn(spent, limit), got {on_warn!r}.")
        _check_on_warn_signature(on_warn)
        self._on_warn = on_warn
        self._fallback_at, self._fallback_model = _validate_fallback(fallback, self._limit)
        self._max_calls = _validate_max_calls(max_llm_calls)
        self._file_prices = None if pricing is None else load_pricing_file(pricing)
        self._env_prices = env_pricing()
        self._on_unknown = _validate_on_unknown(on_unknown_price)
        self._max_total_tokens = _validate_max_total_tokens(max_total_tokens)
        self._reserved_tokens = 0

        self.parent: Budget | None = None
        self._chain: tuple[Budget, ...] = (self,)
        self._root: Budget = self
        # Derived from the chain, which is fixed when the budget is first entered (``_attach``): the budgets
        # of the chain with a token cap, whether any has a fallback, and prices found in the chain's tables
        # (which never change once built) by (model, provider).
        self._token_capped: tuple[Budget, ...] = () if self._max_total_tokens is None else (self,)
        self._chain_fallback = self._fallback_model is not None
        self._table_prices: dict[tuple[str | None, str | None], Price | None] = {}
        # Reentrant: garbage collection may settle a dropped stream inside this thread's locked section.
        self._lock = threading.RLock()
        self._attached = False

        self._spent = ZERO
        self._own_spent = ZERO
        self._reserved = ZERO
        self._calls = 0
        self._inflight = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._estimated_calls = 0
        self._unpriced_calls = 0
        self._unpriced_input_tokens = 0
        self._unpriced_output_tokens = 0
        self._warned = False
        self._unpriced_warned: set[str | None] = set()
        self._models: dict[str | None, ModelTotals] = {}
        self._records: deque[_RecordFields] = deque(maxlen=MAX_RECORDS)
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
        return None if self._limit is None else float(self._limit)

    @property
    def spent(self) -> float:
        """USD spent by calls in this budget and its children (settled calls only)."""
        return float(self._spent)

    @property
    def spent_exact(self) -> Decimal:
        """``spent`` as an exact ``Decimal``."""
        return self._spent

    @property
    @exact_money
    def remaining(self) -> float | None:
        """``limit - spent`` (never negative), or None without a dollar cap. Calls in flight hold part of it."""
        if self._limit is None:
            return None
        return float(max(self._limit - self._spent, ZERO))

    @property
    def reserved(self) -> float:
        """USD held for calls in flight (their worst-case cost)."""
        return float(self._reserved)

    @property
    def calls(self) -> int:
        """Settled LLM calls in this budget and its children."""
        return self._calls

    @property
    def max_llm_calls(self) -> int | None:
        return self._max_calls

    @property
    def input_tokens(self) -> int:
        return self._input_tokens

    @property
    def output_tokens(self) -> int:
        return self._output_tokens

    @property
    def estimated_calls(self) -> int:
        """Calls whose usage the server did not report, so shekel charged an estimate."""
        return self._estimated_calls

    @property
    def unpriced_calls(self) -> int:
        """Calls for which no price was known: counted in tokens, charged $0."""
        return self._unpriced_calls

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
            return {
                m: ModelTotals(**{k: getattr(t, k) for k in t.__slots__}) for m, t in self._models.items()
            }

    def __repr__(self) -> str:
        limit = "no limit" if self._limit is None else f"${self._limit}"
        return f"<Budget {self.path!r} spent=${self._spent} of {limit}, calls={self._calls}>"

    # ---------------------------------------------------------------- entering and leaving
    def __enter__(self) -> Budget:
        from ._patching import ensure_installed

        ensure_installed()
        active = _context.current_budget()
        if not self._attached:
            self._attach(active)
        elif active is not None and active is not self and active not in self._chain:
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

    async def __aenter__(self) -> Budget:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _attach(self, parent: Budget | None) -> None:
        self._attached = True
        if parent is None:
            return
        with parent._lock:
            self.parent = parent
            self._chain = (self, *parent._chain)
            self._token_capped += parent._token_capped
            self._chain_fallback = self._chain_fallback or parent._chain_fallback
            self._table_prices = {}
            self._root = parent._root
            self._lock = parent._lock
            parent._children.append(self)

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

    def _fallback_due(self) -> str | None:
        for budget in self._chain:
            if (
                budget._fallback_model is not None
                and budget._limit is not None
                and budget._spent >= budget._fallback_at * budget._limit
            ):
                return budget._fallback_model
        return None

    def _any_fallback(self) -> str | None:
        for budget in self._chain:
            if budget._fallback_model is not None:
                return budget._fallback_model
        return None

    # ---------------------------------------------------------------- the ledger
    @exact_money
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

        ``prompt_tokens`` must err high. When ``max_tokens`` is None and a dollar cap applies, the reservation
        grants the most output tokens the budget can pay for (at most ``max_tokens_ceiling``); the caller must
        send that value. Raises :class:`BudgetExceededError` when the call cannot be paid for; then nothing is
        held. Fallback models take over once their share of the budget is spent, or when only they fit.
        ``provider`` is passed to :meth:`price_for`. With ``on_unknown_price="raise"`` a call without a price
        raises :class:`PricingError` here, before anything is sent.
        """
        notices: list[str | None] = []
        with self._lock:
            fallback = self._fallback_due() if self._chain_fallback else None
            if fallback is not None and fallback != model:
                reservation = self._reserve_locked(
                    fallback, prompt_tokens, max_tokens, max_tokens_ceiling, model, provider
                )
            else:
                try:
                    reservation = self._reserve_locked(
                        model, prompt_tokens, max_tokens, max_tokens_ceiling, None, provider
                    )
                except BudgetExceededError as exc:
                    fallback = self._any_fallback() if self._chain_fallback else None
                    if exc.reason != "usd" or fallback is None or fallback == model:
                        raise
                    reservation = self._reserve_locked(
                        fallback, prompt_tokens, max_tokens, max_tokens_ceiling, model, provider
                    )
            if (
                reservation.price is None
                and self._has_limit()
                and self._unknown_policy() == "warn"
                and reservation.model not in self._root._unpriced_warned
            ):
                self._root._unpriced_warned.add(reservation.model)
                notices.append(reservation.model)
        try:
            for model_name in notices:
                warnings.warn(
                    f"shekel: {unknown_price_message(model_name, reservation.provider, self.path)} Until then "
                    "its calls are counted in tokens but cost $0, so max_usd cannot stop them.",
                    UserWarning,
                    stacklevel=3,
                )
        except BaseException:  # a warning turned error (-W error): the call is not sent, so it holds nothing
            self.release(reservation)
            raise
        return reservation

    def _has_limit(self) -> bool:
        return any(b._limit is not None for b in self._chain)

    def _reserve_locked(
        self,
        model: str | None,
        prompt_tokens: int,
        max_tokens: int | None,
        ceiling: int,
        fallback_from: str | None,
        provider: str | None = None,
    ) -> Reservation:
        chain = self._chain
        for budget in chain:
            if budget._max_calls is not None and budget._calls + budget._inflight >= budget._max_calls:
                raise BudgetExceededError(
                    budget_name=budget.path,
                    spent=budget._spent,
                    limit=budget._limit,
                    model=model,
                    reason="calls",
                    calls=budget._calls + budget._inflight,
                    max_calls=budget._max_calls,
                )
        price = self.price_for(model, provider)
        if price is None and self._unknown_policy() == "raise":
            raise PricingError(
                "shekel refused the call before sending it (on_unknown_price='raise'): "
                + unknown_price_message(model, provider, self.path)
            )
        tightest: Budget | None = None
        room = ZERO
        for budget in chain:
            if budget._limit is not None:
                budget_room = budget._limit - budget._spent - budget._reserved
                if tightest is None or budget_room < room:
                    tightest, room = budget, budget_room
        cost = ZERO
        requested = max_tokens
        if price is not None:
            prompt_cost = price.input_per_token * prompt_tokens
            if max_tokens is None and tightest is not None and price.output_per_token > 0:
                affordable = int((room - prompt_cost) / price.output_per_token) - OUTPUT_MARGIN_TOKENS
                max_tokens = max(min(ceiling, affordable), 1)
            output_bound = 0 if max_tokens is None else max_tokens + OUTPUT_MARGIN_TOKENS
            cost = prompt_cost + price.output_per_token * output_bound
        tokens = 0
        if self._token_capped:
            # A max_tokens shekel chose for the dollars is a ceiling for the token cap, not a caller's demand.
            token_ceiling = (
                ceiling if requested is not None or max_tokens is None else min(ceiling, max_tokens)
            )
            max_tokens, tokens = self._reserve_tokens_locked(model, prompt_tokens, requested, token_ceiling)
            if price is not None and max_tokens is not None:
                # The token cap may have set or lowered max_tokens: hold money for what will be asked.
                cost = price.input_per_token * prompt_tokens + price.output_per_token * (
                    max_tokens + OUTPUT_MARGIN_TOKENS
                )
        if tightest is not None and cost > room:
            raise BudgetExceededError(
                budget_name=tightest.path,
                spent=tightest._spent,
                limit=tightest._limit,
                model=model,
                needed=cost,
                reserved=tightest._reserved,
            )
        for budget in chain:
            budget._reserved += cost
            budget._inflight += 1
            budget._reserved_tokens += tokens
        return Reservation(chain, cost, model, price, max_tokens, fallback_from, provider, tokens)

    def _reserve_tokens_locked(
        self, model: str | None, prompt_tokens: int, max_tokens: int | None, ceiling: int
    ) -> tuple[int | None, int]:
        """Fit the call under every ``max_total_tokens`` of the chain: (max_tokens to send, tokens to hold)."""
        capped = self._token_capped
        if not capped:
            return max_tokens, 0
        tightest = min(capped, key=lambda b: b._tokens_room())
        room = tightest._tokens_room()
        if max_tokens is None:
            max_tokens = max(min(ceiling, room - prompt_tokens - OUTPUT_MARGIN_TOKENS), 1)
        tokens = prompt_tokens + max_tokens + OUTPUT_MARGIN_TOKENS
        if tokens > room:
            raise BudgetExceededError(
                budget_name=tightest.path,
                spent=tightest._spent,
                limit=tightest._limit,
                model=model,
                reason="tokens",
            )
        return max_tokens, tokens

    def _tokens_room(self) -> int:
        assert self._max_total_tokens is not None
        return self._max_total_tokens - self._input_tokens - self._output_tokens - self._reserved_tokens

    @exact_money
    def release(self, reservation: Reservation) -> None:
        """Give back everything a call held: it failed, so it costs nothing."""
        with self._lock:
            for budget in reservation.chain:
                budget._reserved -= reservation.cost
                budget._inflight -= 1
                budget._reserved_tokens -= reservation.tokens

    @exact_money
    def settle(
        self,
        reservation: Reservation,
        usage: Usage,
        *,
        streamed: bool,
        source: str,
        label: str | None = None,
        provider: str | None = None,
    ) -> Decimal:
        """Charge a finished call at its real usage on every budget that held it, release the rest.

        ``label`` names the model in records when the priced id is unknown (a URL endpoint, say). Returns the
        cost charged. Warnings (``warn_at``) fire after the ledger is updated, outside the lock. ``provider``
        is the Inference Provider that served the call, when the answer said so: the call is charged at its
        price (an auto-routed call was reserved at the highest one).
        """
        notes: list[str]
        if provider is None or provider == reservation.provider:  # _settle_price's usual case, inline
            price, served, notes = reservation.price, reservation.provider, []
        else:
            price, served, notes = self._settle_price(reservation, provider)
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
        cost = ZERO if price is None else price.cost(usage.input_tokens, usage.output_tokens, cached)
        model = reservation.model if reservation.model is not None else label
        record: _RecordFields = (  # CallRecord's fields, in order
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
        )
        to_warn: list[Budget] = []
        with self._lock:
            for budget in reservation.chain:
                budget._reserved -= reservation.cost
                budget._inflight -= 1
                budget._reserved_tokens -= reservation.tokens
                budget._spent += cost
                budget._calls += 1
                budget._input_tokens += usage.input_tokens
                budget._output_tokens += usage.output_tokens
                try:
                    totals = budget._models[model]
                except KeyError:
                    totals = budget._models[model] = ModelTotals()
                totals.calls += 1
                totals.input_tokens += usage.input_tokens
                totals.output_tokens += usage.output_tokens
                totals.cost += cost
                if usage.estimated:
                    budget._estimated_calls += 1
                    totals.estimated_calls += 1
                if price is None:
                    budget._unpriced_calls += 1
                    budget._unpriced_input_tokens += usage.input_tokens
                    budget._unpriced_output_tokens += usage.output_tokens
                    totals.unpriced_calls += 1
                if (
                    budget._warn_at is not None
                    and not budget._warned
                    and budget._limit is not None
                    and budget._spent >= budget._warn_at * budget._limit
                ):
                    budget._warned = True
                    to_warn.append(budget)
            owner = reservation.chain[0]
            owner._own_spent += cost
            owner._records.append(record)
        for budget in to_warn:
            budget._fire_warning()
        return cost

    def _settle_price(
        self, reservation: Reservation, provider: str | None
    ) -> tuple[Price | None, str | None, list[str]]:
        if provider is None or provider == reservation.provider:
            return reservation.price, reservation.provider, []
        price = reservation.chain[0].price_for(reservation.model, provider)
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
        if (
            price.input_per_token > reserved.input_per_token
            or price.output_per_token > reserved.output_per_token
        ):
            return (
                reserved,
                provider,
                [f"served by {provider!r} at {price}, above the price reserved: charged as reserved"],
            )
        return price, provider, []

    def _fire_warning(self) -> None:
        assert self._limit is not None
        if self._on_warn is not None:
            self._on_warn(float(self._spent), float(self._limit))
            return
        warnings.warn(
            f"shekel: budget {self.path!r} has spent ${self._spent} of ${self._limit} "
            f"({self._spent / self._limit:.0%}), past its warn_at of {self._warn_at:.0%}.",
            UserWarning,
            stacklevel=2,
        )

    # ---------------------------------------------------------------- reports
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot: totals, per-model aggregates, recent call records and child budgets."""
        with self._lock:
            models = {
                str(m): {
                    "calls": t.calls,
                    "input_tokens": t.input_tokens,
                    "output_tokens": t.output_tokens,
                    "cost_usd": str(t.cost),
                    "estimated_calls": t.estimated_calls,
                    "unpriced_calls": t.unpriced_calls,
                }
                for m, t in self._models.items()
            }
            records = [
                {
                    "model": r.model,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cost_usd": str(r.cost),
                    "estimated": r.estimated,
                    "priced": r.priced,
                    "streamed": r.streamed,
                    "source": r.source,
                    "fallback_from": r.fallback_from,
                    "at": r.at,
                    "provider": r.provider,
                    "price_source": r.price_source,
                    "notes": list(r.notes),
                }
                for r in (CallRecord(*fields) for fields in self._records)
            ]
            children = list(self._children)
            snapshot: dict[str, Any] = {
                "name": self._name,
                "path": self.path,
                "limit_usd": None if self._limit is None else str(self._limit),
                "spent_usd": str(self._spent),
                "own_spent_usd": str(self._own_spent),
                "reserved_usd": str(self._reserved),
                "calls": self._calls,
                "max_llm_calls": self._max_calls,
                "max_total_tokens": self._max_total_tokens,
                "input_tokens": self._input_tokens,
                "output_tokens": self._output_tokens,
                "estimated_calls": self._estimated_calls,
                "unpriced_calls": self._unpriced_calls,
                "unpriced_input_tokens": self._unpriced_input_tokens,
                "unpriced_output_tokens": self._unpriced_output_tokens,
                "models": models,
                "records": records,
            }
        snapshot["children"] = [child.to_dict() for child in children]
        return snapshot

    @exact_money
    def summary(self) -> str:
        """A readable table of this budget: totals, per model, per child budget, and unpriced calls."""
        from ._report import render_summary

        return render_summary(self.to_dict())


def _check_on_warn_signature(on_warn: object) -> None:
    """Refuse a callback that cannot take ``(spent, limit)`` now, not with a TypeError inside a later call."""
    if on_warn is None:
        return
    try:
        signature = inspect.signature(on_warn)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # no introspectable signature (some builtins): trust it
        return
    try:
        signature.bind(0.0, 0.0)
    except TypeError:
        raise BudgetConfigError(
            f"on_warn must accept two positional arguments, on_warn(spent, limit); {on_warn!r} takes "
            f"{signature}."
        ) from None


def _validate_limit(max_usd: object) -> Decimal | None:
    if max_usd is None:
        return None
    fix = "Pass max_usd as a positive number of US dollars, e.g. budget(max_usd=1.00), or None for no cap."
    amount = to_decimal(max_usd, what="max_usd", fix=fix)
    if amount <= 0:
        raise BudgetConfigError(f"max_usd must be greater than 0, got {max_usd!r}. {fix}")
    return amount


def _validate_warn_at(warn_at: object, limit: Decimal | None) -> Decimal | None:
    if warn_at is None:
        return None
    fix = "warn_at is a fraction of max_usd in (0, 1], e.g. warn_at=0.8 to be warned at 80%."
    fraction = to_decimal(warn_at, what="warn_at", fix=fix)
    if not (0 < fraction <= 1):
        raise BudgetConfigError(f"warn_at must be in (0, 1], got {warn_at!r}. {fix}")
    if limit is None:
        raise BudgetConfigError(f"warn_at={warn_at!r} needs max_usd: it is a fraction of the dollar cap.")
    return fraction


def _validate_fallback(fallback: object, limit: Decimal | None) -> tuple[Decimal, str | None]:
    if fallback is None:
        return ZERO, None
    fix = 'Use fallback={"at_pct": 0.8, "model": "<cheaper model id>"}.'
    if not isinstance(fallback, Mapping):
        raise BudgetConfigError(f"fallback must be a mapping, got {fallback!r}. {fix}")
    unknown = sorted(str(k) for k in fallback if k not in _FALLBACK_KEYS)
    if unknown:
        raise BudgetConfigError(f"fallback has unknown key(s) {', '.join(map(repr, unknown))}. {fix}")
    model = fallback.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BudgetConfigError(f"fallback needs a 'model' (a non-empty model id), got {model!r}. {fix}")
    at_pct = to_decimal(fallback.get("at_pct", 0.8), what="fallback['at_pct']", fix=fix)
    if not (0 < at_pct <= 1):
        raise BudgetConfigError(
            f"fallback['at_pct'] must be in (0, 1], got {fallback.get('at_pct')!r}. {fix}"
        )
    if limit is None:
        raise BudgetConfigError(f"fallback needs max_usd: it switches models at a share of the cap. {fix}")
    return at_pct, model


def _validate_max_calls(max_llm_calls: object) -> int | None:
    if max_llm_calls is None:
        return None
    if isinstance(max_llm_calls, bool) or not isinstance(max_llm_calls, int) or max_llm_calls < 1:
        raise BudgetConfigError(
            f"max_llm_calls must be a whole number of calls >= 1, got {max_llm_calls!r}. "
            "Pass e.g. max_llm_calls=20, or None for no call limit."
        )
    return max_llm_calls


def _validate_on_unknown(policy: object) -> str | None:
    if policy is None or policy in _UNKNOWN_PRICE_POLICIES:
        return policy
    raise BudgetConfigError(
        f"on_unknown_price must be 'warn', 'raise' or 'zero', got {policy!r}. 'warn' (the default) warns once "
        "per model, 'raise' refuses unpriced calls, 'zero' counts them as free without a warning."
    )


def _validate_max_total_tokens(max_total_tokens: object) -> int | None:
    if max_total_tokens is None:
        return None
    if isinstance(max_total_tokens, bool) or not isinstance(max_total_tokens, int) or max_total_tokens < 1:
        raise BudgetConfigError(
            f"max_total_tokens must be a whole number of tokens >= 1, got {max_total_tokens!r}. "
            "Pass e.g. max_total_tokens=100_000 (input plus output tokens), or None for no token limit."
        )
    return max_total_tokens


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
        max_llm_calls: The most LLM calls the budget (with its children) may make.
        pricing: A TOML or JSON pricing file (see docs/pricing.md), used after ``price_per_1k_tokens`` and
            before the bundled Hugging Face prices. ``SHEKEL_PRICING`` names one for every budget.
        on_unknown_price: ``"warn"`` (the default: warn once per model, count tokens, charge $0),
            ``"raise"`` (refuse the call with :class:`PricingError` before it is sent) or ``"zero"``
            (count it as free, silently). Nested budgets inherit it.
        max_total_tokens: The most input plus output tokens the budget (with its children) may use; reserved
            before each call like dollars, so it caps free-tier calls too.
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
    )
