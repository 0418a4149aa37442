"""The in-memory ledger: the accounts of budgets that live in this process, under their tree's lock.

Every function here runs with the lock of the budgets' tree held (``Tree.lock``): a reservation is checked
and taken on every account of a chain at once, so concurrent calls cannot together pass a cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from .._money import ZERO
from . import OK, OUTPUT_MARGIN_TOKENS, Account, NoRoom

#: What calls in flight of one thread or task hold on an account: (money, tokens, calls).
Held = tuple[Decimal, int, int]


def hold(
    accounts: Sequence[Account],
    input_cost: Decimal,
    output_price: Decimal,
    prompt_tokens: int,
    max_tokens: int | None,
    ceiling: int,
    patient: bool,
) -> tuple[int | None, Decimal, int]:
    """Hold one call on every account: returns (max_tokens to send, money held, tokens held).

    ``max_tokens`` None means "as many as the accounts can pay for, up to ``ceiling``": sized against what
    is not spent yet when ``patient`` (the call will wait for holds of calls in flight to be settled rather
    than take a smaller answer), else against what is neither spent nor held. Raises :class:`NoRoom`, naming
    the account that lacks room, and then holds nothing.
    """
    tight: Account | None = None
    room = ZERO
    token_tight: Account | None = None
    token_room = 0
    for account in accounts:
        if account.max_calls is not None and (
            account.calls + account.failed + account.inflight >= account.max_calls
        ):
            raise NoRoom("calls", account)
        limit = account.limit
        if limit is not None:
            account_room = limit - account.spent - account.reserved
            if tight is None or account_room < room:
                tight, room = account, account_room
        if account.max_tokens is not None:
            account_tokens = account.tokens_room()
            if token_tight is None or account_tokens < token_room:
                token_tight, token_room = account, account_tokens
    if max_tokens is None:
        bound: int | None = None
        if tight is not None and output_price > 0:
            base = _least_free(accounts) if patient else room
            bound = int((base - input_cost) / output_price) - OUTPUT_MARGIN_TOKENS
        if token_tight is not None:
            base_tokens = _least_free_tokens(accounts) if patient else token_room
            by_tokens = base_tokens - prompt_tokens - OUTPUT_MARGIN_TOKENS
            bound = by_tokens if bound is None else min(bound, by_tokens)
        if bound is not None:
            max_tokens = max(min(ceiling, bound), 1)
    output = 0 if max_tokens is None else max_tokens + OUTPUT_MARGIN_TOKENS
    cost = input_cost + output_price * output if output else input_cost
    tokens = 0
    if token_tight is not None:
        tokens = prompt_tokens + output
        if tokens > token_room:
            raise NoRoom("tokens", token_tight)
    if tight is not None and cost > room:
        raise NoRoom("usd", tight, cost)
    for account in accounts:
        account.reserved += cost
        account.inflight += 1
        account.reserved_tokens += tokens
    return max_tokens, cost, tokens


def _least_free(accounts: Sequence[Account]) -> Decimal:
    """The least any capped account has not spent (calls in flight not counted)."""
    return min(a.limit - a.spent for a in accounts if a.limit is not None)


def _least_free_tokens(accounts: Sequence[Account]) -> int:
    return min(a.max_tokens - a.input_tokens - a.output_tokens for a in accounts if a.max_tokens is not None)


def check_unheld(
    accounts: Sequence[Account],
    input_cost: Decimal,
    output_price: Decimal,
    prompt_tokens: int,
    max_tokens: int | None,
    own: Mapping[Account, Held],
) -> None:
    """Raise :class:`NoRoom` unless the call would fit if every call in flight, except the caller's own
    (``own``), cost nothing: only then can waiting for them make room. ``max_tokens`` None counts as 1."""
    output = (1 if max_tokens is None else max_tokens) + OUTPUT_MARGIN_TOKENS
    cost = input_cost + output_price * output
    tokens = prompt_tokens + output
    for account in accounts:
        money, held_tokens, calls = own.get(account, (ZERO, 0, 0))
        if account.max_calls is not None and account.calls + account.failed + calls >= account.max_calls:
            raise NoRoom("calls", account)
        if account.max_tokens is not None and (
            tokens > account.max_tokens - account.input_tokens - account.output_tokens - held_tokens
        ):
            raise NoRoom("tokens", account)
        if account.limit is not None and cost > account.limit - account.spent - money:
            raise NoRoom("usd", account, cost)


def fits_without_others(
    accounts: Sequence[Account],
    input_cost: Decimal,
    output_price: Decimal,
    prompt_tokens: int,
    max_tokens: int | None,
    own: Mapping[Account, Held],
) -> bool:
    """Whether :func:`check_unheld` passes."""
    try:
        check_unheld(accounts, input_cost, output_price, prompt_tokens, max_tokens, own)
    except NoRoom:
        return False
    return True


def settle(
    accounts: Sequence[Account],
    held: Decimal,
    held_tokens: int,
    cost: Decimal,
    input_tokens: int,
    output_tokens: int,
    outcome: str,
) -> None:
    """Charge a call that was sent: give back what it held, add what it cost (``outcome``: see OK)."""
    answered = outcome == OK
    for account in accounts:
        account.reserved -= held
        account.inflight -= 1
        account.reserved_tokens -= held_tokens
        account.spent += cost
        account.input_tokens += input_tokens
        account.output_tokens += output_tokens
        if answered:
            account.calls += 1
        else:
            account.failed += 1


def release(accounts: Sequence[Account], held: Decimal, held_tokens: int) -> None:
    """Give back everything a call held: it was never sent, so it costs nothing and counts nowhere."""
    for account in accounts:
        account.reserved -= held
        account.inflight -= 1
        account.reserved_tokens -= held_tokens
