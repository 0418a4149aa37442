"""Which budget is active: a ContextVar holding a frame per ``with budget()``, and carrying it to threads."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._patching import ensure_installed

if TYPE_CHECKING:
    from ._budget import Budget

P = ParamSpec("P")
R = TypeVar("R")


class _Frame:
    """One entry of a budget in one context. The token restores exactly what was active before it.

    ``budget`` may be None: an integration that cannot reset a frame in a context it does not run in (LangChain
    ends async runs in copies of the context) neutralises the frame instead, and None means "no budget".
    """

    __slots__ = ("budget", "token")

    def __init__(self, budget: Budget | None) -> None:
        self.budget = budget
        self.token: Token[_Frame | None] | None = None


_active: ContextVar[_Frame | None] = ContextVar("shekel_active_budget", default=None)


def current_budget() -> Budget | None:
    """The innermost budget active in this thread or task, or None."""
    frame = _active.get()
    return None if frame is None else frame.budget


def push(budget: Budget) -> _Frame:
    frame = _Frame(budget)
    frame.token = _active.set(frame)
    return frame


def pop(budget: Budget) -> None:
    frame = _active.get()
    if frame is None or frame.budget is not budget or frame.token is None:
        raise RuntimeError(
            f"budget {budget.name!r} is being exited but it is not the innermost active budget here; "
            "budgets must be exited in the reverse order they were entered, in the same thread or task."
        )
    _active.reset(frame.token)


@contextmanager
def activated(budget: Budget) -> Iterator[Budget]:
    """Make ``budget`` the active one for a block *without entering it*: its parent stays what it was.

    For handlers bound to a budget object (``BudgetCallbackHandler(budget=b)``): a long-lived budget used under
    one request's budget and then another's must not be attached to the first, as ``with b:`` would do.
    """
    ensure_installed()
    frame = push(budget)
    try:
        yield budget
    finally:
        assert frame.token is not None
        _active.reset(frame.token)


def carry(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` so that it runs inside the budget active *now*, in whatever thread later calls it.

    ``threading.Thread`` and ``ThreadPoolExecutor.submit`` start with an empty context, so a budget
    entered in the caller is not active in the worker. ``pool.submit(shekel.carry(work), item)`` fixes that;
    the wrapper may be called from many threads at once. With no active budget it returns ``fn`` unchanged.
    """
    budget = current_budget()
    if budget is None:
        return fn

    @functools.wraps(fn)
    def run_in_budget(*args: P.args, **kwargs: P.kwargs) -> R:
        frame = push(budget)
        try:
            return fn(*args, **kwargs)
        finally:
            assert frame.token is not None
            _active.reset(frame.token)

    return run_in_budget
