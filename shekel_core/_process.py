"""A budget for a whole process: entered once in the main thread and active in every thread started later.

``shekel run`` and the processes it starts use it. A new thread starts with an empty context (until Python
3.14's ``thread_inherit_context``), so a budget entered with ``with`` is not active in it; here each new
thread enters the process's budget as its first step, unless something already made a budget active in it
(``shekel.carry``, or an inherited context).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import _context

if TYPE_CHECKING:
    from ._budget import Budget

_process_budget: Budget | None = None
_original_bootstrap: Any = None


def process_budget() -> Budget | None:
    """The budget entered for this process's lifetime, or None."""
    return _process_budget


def enter_for_process(budget: Budget) -> Budget:
    """Enter ``budget`` in this thread and in every thread started from now on; never exited."""
    global _process_budget, _original_bootstrap
    budget.__enter__()
    _process_budget = budget
    if _original_bootstrap is None:
        original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
        _original_bootstrap = original

        def _bootstrap_inner(self: threading.Thread) -> None:
            process = _process_budget
            if process is not None and _context.current_budget() is None:
                _context.push(process)  # the thread's own context, gone with the thread
            original(self)

        threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]
    return budget


def leave_process() -> None:
    """Undo :func:`enter_for_process` for threads started from now on (the thread hook is removed)."""
    global _process_budget, _original_bootstrap
    _process_budget = None
    if _original_bootstrap is not None:
        threading.Thread._bootstrap_inner = _original_bootstrap  # type: ignore[attr-defined]
        _original_bootstrap = None
