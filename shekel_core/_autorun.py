"""The budget of a ``shekel run``, carried to the Python processes its program starts.

``shekel run`` puts the run's budget (its store URL, name and limits) in the ``SHEKEL_RUN`` environment
variable. The ``shekel_autorun.pth`` file installed with the package runs one cheap line at every Python
start-up: with ``SHEKEL_RUN`` set, it calls :func:`start`, which enters that budget for the process's
lifetime; without it, it does nothing. Processes started by ``multiprocessing`` (spawn, forkserver),
``concurrent.futures.ProcessPoolExecutor`` and ``subprocess`` running Python all start that way; forked
children inherit the budget already entered (a shared budget lives in its store, so a fork may spend it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._process import enter_for_process, process_budget

if TYPE_CHECKING:
    from ._budget import Budget

#: The environment variable that carries a run's budget to its child processes (JSON).
RUN_ENV = "SHEKEL_RUN"
#: The exit code of a child process that could not join the run's budget (it must not spend outside it).
JOIN_FAILED = 3
#: The key ``shekel run`` writes in every configuration it puts in ``SHEKEL_RUN``, with the format's version:
#: only a value carrying it is a run's configuration (anything else is ignored, never fatal).
MARKER = "shekel_run"
#: What a run's id looks like (hex, as ``shekel run`` makes it): anything else is not tagged.
_RUN_ID = re.compile(r"[0-9a-f]{8,32}")
VERSION = 1
_warned = False


def parse(raw: str) -> dict[str, Any] | None:
    """The run's configuration in ``raw`` (the value of ``SHEKEL_RUN``), or None if ``raw`` is not one.

    Only a JSON object carrying :data:`MARKER` is a run's configuration: a leftover ``SHEKEL_RUN=1`` or
    another tool's variable of the same name is not, and must not stop an unrelated Python process.
    """
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    if isinstance(config, dict) and config.get(MARKER) == VERSION:
        return config
    return None


def budget_from(config: dict[str, Any]) -> Budget:
    """The shared budget a run's configuration describes (the same in the run and in every child)."""
    from ._budget import budget

    prices = config.get("price_per_1k_tokens")
    return budget(
        None if config.get("max_usd") is None else Decimal(config["max_usd"]),
        name=config["name"],
        store=config["store"],
        window=config.get("window"),
        max_llm_calls=config.get("max_llm_calls"),
        max_total_tokens=config.get("max_total_tokens"),
        price_per_1k_tokens=None if prices is None else {k: Decimal(v) for k, v in prices.items()},
        pricing=config.get("pricing"),
        fallback=None
        if config.get("fallback") is None
        else {"at_pct": float(config["fallback"]["at_pct"]), "model": config["fallback"]["model"]},
    )


class RefusalLog:
    """Appends each refusal this process sees to the run's file of refusals, one JSON line each."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, event: object) -> None:
        from ._events import Refused

        if not isinstance(event, Refused):
            return
        error = event.error
        line = json.dumps(
            {
                "at": time.time(),
                "pid": os.getpid(),
                "budget": getattr(error, "budget_name", event.budget.path),
                "model": event.model,
                "reason": getattr(error, "reason", type(error).__name__),
                "error": type(error).__name__,
                "message": str(error),
            }
        )
        # One write of one short line with O_APPEND: lines of many processes do not interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)


def join(config: dict[str, Any], *, with_outer: bool = True) -> Budget:
    """Enter the run's budget for this process's lifetime and log its refusals to the run's file.

    A ``shekel run`` started inside another one records the outer run's budget in ``"outer"``: its processes
    enter the outer budget first and the run's inside it, so the outer cap holds for them too.
    ``with_outer=False``: the outer one is already entered here.
    """
    from ._events import subscribe

    outer = config.get("outer")
    if outer is not None and with_outer:
        join(outer)
    run_budget = budget_from(config)
    run = config.get("run_id")
    part = run_budget._shared
    if part is not None:
        if isinstance(run, str) and _RUN_ID.fullmatch(run):
            part.run = run  # its calls' log entries say so: the run reports its own calls
        part.private = config.get("private") is True
    entered = enter_for_process(run_budget)
    if config.get("refusals"):
        subscribe(RefusalLog(config["refusals"]))
    return entered


def start() -> None:
    """Called by ``shekel_autorun.pth`` at start-up when ``SHEKEL_RUN`` is set.

    A value that is not a run's configuration (see :func:`parse`) is ignored, with a one-line warning: the
    .pth runs in every Python process and must never break one. A process of a real run that cannot join
    the run's budget stops at once (exit code 3): it must not spend outside the cap.
    """
    raw = os.environ.get(RUN_ENV)
    if not raw or process_budget() is not None:
        return
    config = parse(raw)
    if config is None:
        global _warned
        if _warned:  # site may run the .pth line twice (a venv's site-packages is added twice)
            return
        _warned = True
        sys.stderr.write(
            f"shekel: ignoring {RUN_ENV}: it is not the configuration `shekel run` writes "
            f"(unset it to silence this warning)\n"
        )
        sys.stderr.flush()
        return
    try:
        join(config)
    except Exception as error:  # fail closed, in one line: this runs before the program does
        sys.stderr.write(
            f"shekel: this process could not join the budget of `shekel run` ({type(error).__name__}: "
            f"{error}); it stops so that it cannot spend outside the cap.\n"
        )
        sys.stderr.flush()
        os._exit(JOIN_FAILED)
