"""``shekel run``: a Python program inside a budget, as ``python SCRIPT ARGS`` would run it.

The run's budget is a shared one, so that the processes the program starts share its cap: in the store
given with ``--store``, or in a private SQLite file made for the run. The budget's description goes to child
processes in ``SHEKEL_RUN`` (``shekel._autorun``); every process enters it for its lifetime. What was spent
is read back from the store's log of settled calls, which holds every process's calls.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import os
import runpy
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import _autorun
from .._process import leave_process, process_budget
from ..errors import BudgetExceededError, ShekelError
from ..ledger.shared import from_nano
from . import _args, _render
from ._codes import EXIT_BUDGET
from ._live import bar, live_line

BUDGET_ENV = "SHEKEL_BUDGET_USD"
DEFAULT_NAME = "shekel-run"
#: How often the status line and the --warn-at check read the store (seconds).
POLL = 0.25


def config_from(args: argparse.Namespace, private_store: str | None, refusals: str) -> dict[str, Any]:
    """The run's budget as ``SHEKEL_RUN`` carries it; raises ``UsageError`` for a bad value."""
    budget_text = args.budget if args.budget is not None else os.environ.get(BUDGET_ENV)
    what = "--budget" if args.budget is not None else BUDGET_ENV
    if args.budget is not None and not args.budget.strip():
        raise _args.UsageError(
            '--budget is empty (an unset variable in --budget "$BUDGET"?): give a number of US dollars, '
            "e.g. --budget 0.50, or leave --budget out for no money cap"
        )
    if args.budget is None and budget_text is not None and not budget_text.strip():
        raise _args.UsageError(
            f"{BUDGET_ENV} is set but empty: give a number of US dollars, e.g. {BUDGET_ENV}=0.50, or unset "
            "it for no money cap"
        )
    max_usd = None if budget_text is None else str(_args.money(budget_text, what))
    if args.store is None and args.window is not None:
        raise _args.UsageError("--window applies to a shared budget: give --store URL --name NAME too")
    if args.store is not None and not args.name:
        raise _args.UsageError("--store needs --name NAME, the budget's key in the store")
    if (args.fallback_model is None) != (args.fallback_at is None):
        raise _args.UsageError(
            "--fallback-model M and --fallback-at F go together, e.g. --fallback-model m --fallback-at 0.8"
        )
    if args.warn_at is not None and max_usd is None:
        raise _args.UsageError(
            "--warn-at is a fraction of --budget: give --budget (or SHEKEL_BUDGET_USD) too"
        )
    pricing = None
    if args.pricing is not None:
        path = Path(args.pricing).expanduser()
        if not path.is_file():
            raise _args.UsageError(
                f"--pricing {args.pricing}: no such file (a TOML or JSON pricing file, see docs/pricing.md)"
            )
        pricing = str(path.resolve())
    return {
        _autorun.MARKER: _autorun.VERSION,
        "store": _absolute(args.store) if args.store is not None else private_store,
        "name": args.name or DEFAULT_NAME,
        "window": args.window,
        "max_usd": max_usd,
        "max_llm_calls": None if args.max_calls is None else _args.count(args.max_calls, "--max-calls"),
        "max_total_tokens": None if args.max_tokens is None else _args.count(args.max_tokens, "--max-tokens"),
        "price_per_1k_tokens": None if args.price_per_1k is None else _args.price_pair(args.price_per_1k),
        "pricing": pricing,
        "fallback": None
        if args.fallback_model is None
        else {"model": args.fallback_model, "at_pct": _args.fraction(args.fallback_at, "--fallback-at")},
        "refusals": refusals,
        # Without --store: the store is the run's own temporary file, never named to the user.
        "private": args.store is None,
        # Tags this run's calls in the store's log: runs sharing a store budget each report their own.
        "run_id": secrets.token_hex(8),
    }


def _absolute(url: str) -> str:
    """``sqlite:///relative.db`` as an absolute path: child processes may start in another directory."""
    url = url.strip()
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and len(url) > len("sqlite:///"):
        return f"sqlite:///{Path(url[len('sqlite:///') :]).resolve().as_posix()}"
    return url


def check_target(args: argparse.Namespace) -> None:
    if args.module is None and args.script is None:
        raise _args.UsageError(
            "give the program to run: shekel run [OPTIONS] SCRIPT [ARGS...] or -m MODULE [ARGS...]"
        )
    if args.module is None and not _runnable(Path(args.script)):
        if Path(args.script).is_dir():
            raise _args.UsageError(f"can't find '__main__' module in {args.script!r}")
        raise _args.UsageError(f"cannot open file {args.script!r}: no such file")
    if args.module is not None:
        import importlib.util

        try:
            found = importlib.util.find_spec(args.module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise _args.UsageError(f"no module named {args.module!r}")


def _runnable(path: Path) -> bool:
    """A file (a script, or a zip file with ``__main__.py``), or a directory with ``__main__.py``: what
    ``python PATH`` runs."""
    return path.is_file() or (path.is_dir() and (path / "__main__.py").is_file())


def _check_store(entered: Any, config: dict[str, Any]) -> None:
    """Read the run's budget in its store once before the program starts: a store that cannot be reached, or
    that keeps the budget over another window than --window, is refused now, not found out after the program
    has run (the message names the store without its password)."""
    try:
        part = entered._shared
        part.store.read(part.limits)
    except ShekelError as error:
        raise _args.UsageError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    check_target(args)
    json_path = (
        None if args.json is None else _args.writable_file("--json", args.json)
    )  # the program may chdir
    if args.warn_at is not None:
        _args.fraction(args.warn_at, "--warn-at")
    folder = tempfile.mkdtemp(prefix="shekel-run-")
    config: dict[str, Any] | None = None
    try:
        private = None if args.store is not None else f"sqlite:///{Path(folder, 'run.db').as_posix()}"
        config = config_from(args, private, str(Path(folder, "refusals.jsonl")))
        outer = _autorun.parse(os.environ.get(_autorun.RUN_ENV) or "")
        if outer is not None:  # inside another `shekel run`: its cap holds here and in our children too
            config["outer"] = outer
        try:
            entered = _autorun.join(config, with_outer=process_budget() is None)
        except ShekelError as error:
            raise _args.UsageError(str(error)) from None
        _check_store(entered, config)
        os.environ[_autorun.RUN_ENV] = json.dumps(config)
        started = time.time()
        monitor = _Monitor(
            entered, config, started, float(args.warn_at) if args.warn_at else None, private is not None
        )
        with monitor.showing(live=not args.quiet and sys.stderr.isatty()):
            code, stopped = _run_program(args)
        leave_process()
        try:
            report = monitor.report(code, stopped)
        except ShekelError as error:  # the store failed after the program ran: keep the program's exit code
            _render.line(f"shekel: no summary: {_args.for_command(error)}", style="red")
            return code
        if json_path is not None:
            try:
                json_path.write_text(json.dumps(report, indent=2) + "\n")
            except OSError as error:
                _render.line(
                    f"shekel: could not write --json {json_path}: {error.strerror or error}", style="red"
                )
        if not args.quiet:
            _print_summary(report)
        if report["calls"] + report["failed_calls"] == 0 and not report["refused"]:
            _render.line(
                "shekel: 0 calls counted: is the client one shekel counts? (see docs/cli.md)", style="yellow"
            )
        return code
    finally:
        if config is not None and config.get("outer") is not None:
            os.environ[_autorun.RUN_ENV] = json.dumps(config["outer"])
        else:
            os.environ.pop(_autorun.RUN_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _refusal_in(error: BaseException) -> str | None:
    """The name of the budget whose refusal stopped the program: ``error`` is a ``BudgetExceededError``, or
    one is its explicit cause (``raise ... from refusal``) or in its group; else None. The implicit
    ``__context__`` is not followed: a bug raised while the program handled a refusal is its own error."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        each = stack.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        if isinstance(each, BudgetExceededError):
            return each.budget_name
        if each.__cause__ is not None:
            stack.append(each.__cause__)
        stack.extend(getattr(each, "exceptions", ()))
    return None


def _stopped_by_budget(error: BaseException) -> bool:
    """Whether a budget refusal stopped the program (see :func:`_refusal_in`)."""
    return _refusal_in(error) is not None


def _run_program(args: argparse.Namespace) -> tuple[int, bool]:
    """Run the program as ``python`` would; its exit code, and whether a budget refusal stopped it."""
    if args.module is not None:
        sys.argv = [args.module, *args.args]
        sys.path[0] = os.getcwd()
    else:
        sys.argv = [args.script, *args.args]  # as typed, as python leaves it
        script = Path(args.script).resolve()  # __file__ is absolute, as python sets it
        # python puts the script's directory first on sys.path, or the directory or zip file it runs.
        sys.path[0] = str(script if script.is_dir() or zipfile.is_zipfile(script) else script.parent)
    try:
        if args.module is not None:
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            _run_as_main(script, as_path=sys.path[0] == str(script))
    except SystemExit as done:
        return _exit_code(done.code), False
    except KeyboardInterrupt:
        return 130, False
    except BaseException as error:
        if _stopped_by_budget(error):
            said = (
                _args.for_command(error)
                if _runs_own(_refusal_in(error), args.name or DEFAULT_NAME)
                else error
            )
            _render.line(f"shekel: the budget stopped the program: {said}", style="red")
            return EXIT_BUDGET, True
        traceback.print_exception(type(error), error, _programs_frames(error.__traceback__))
        return 1, False
    return 0, False


def _run_as_main(script: Path, *, as_path: bool) -> None:
    """Run ``script`` (absolute) in a fresh ``__main__`` module as ``python SCRIPT`` does: ``__file__``
    absolute, ``sys.argv`` untouched (``runpy.run_path`` would set ``argv[0]`` to the path it was given).
    ``as_path``: a directory or zip file on ``sys.path``, whose ``__main__`` module is run."""
    import importlib.machinery
    import types

    main = types.ModuleType("__main__")
    if as_path:
        spec = importlib.machinery.PathFinder.find_spec("__main__", [str(script)])
        if spec is None or spec.loader is None or spec.origin is None:
            raise _args.UsageError(f"can't find '__main__' module in {str(script)!r}")
        code = spec.loader.get_code("__main__")  # type: ignore[attr-defined]
        main.__dict__.update(__file__=spec.origin, __loader__=spec.loader, __spec__=spec, __package__="")
    else:
        with io.open_code(str(script)) as source:
            code = compile(source.read(), str(script), "exec")
        loader = importlib.machinery.SourceFileLoader("__main__", str(script))
        main.__dict__.update(__file__=str(script), __loader__=loader, __spec__=None, __package__=None)
    main.__dict__.update(__cached__=None, __builtins__=builtins)
    previous = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:
        if previous is not None:
            sys.modules["__main__"] = previous


def _programs_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without its leading frames of shekel and runpy: python shows only the program's frames."""
    ours = {str(Path(__file__).resolve()), str(Path(runpy.__file__).resolve()), "<frozen runpy>"}
    first = tb
    while first is not None and _frame_file(first) in ours:
        first = first.tb_next
    return first if first is not None else tb


def _frame_file(tb: TracebackType) -> str:
    name = tb.tb_frame.f_code.co_filename
    return name if name.startswith("<") else str(Path(name).resolve())


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


class _Monitor:
    """Reads the run's spend from the store: for the live line, for --warn-at, and for the final report."""

    def __init__(
        self, entered: Any, config: dict[str, Any], started: float, warn_at: float | None, private: bool
    ) -> None:
        self.budget = entered
        self.config = config
        self.store = entered._shared.store
        self.name = config["name"]
        self.started = started
        self.limit = None if config["max_usd"] is None else Decimal(config["max_usd"])
        self.warn_at = warn_at
        self.warned = False
        self.seen_at = started
        self.calls = 0
        self.spent = Decimal(0)
        self.private = private
        self.last_model: str | None = None
        self._stop = threading.Event()
        # A fork waits for a poll to finish: a child forked while this thread is inside SQLite (or any store
        # client) could inherit a lock held by a thread it does not have.
        self._polling = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._polling.acquire,
                after_in_parent=self._polling.release,
                after_in_child=self._polling.release,
            )

    def poll(self) -> None:
        self.spent = self.budget.spent_exact  # the shared figure: every process's, in the current window
        self.calls = self.budget.calls
        recent = self._ours(self.store.log(self.name, since=self.seen_at))
        if recent:
            self.seen_at = recent[-1]["at"]
            self.last_model = recent[-1].get("model") or self.last_model
        self._check_warning()

    def _ours(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The entries of this run's calls (and of runs inside it), not of other runs on the same budget."""
        run = self.config["run_id"]
        return [e for e in entries if run in e.get("runs", ())]

    def _check_warning(self) -> None:
        if self.warn_at is None or self.warned or self.limit is None or not self.limit:
            return
        spent = self.spent
        if spent >= Decimal(str(self.warn_at)) * self.limit:
            self.warned = True
            _render.line(
                f"shekel: spent ${spent} of ${self.limit} ({spent / self.limit:.0%}), past --warn-at {self.warn_at}",
                style="yellow",
            )

    def status(self) -> str:
        spent = self.spent
        share = None if not self.limit else float(spent / self.limit)
        limit = "" if self.limit is None else f" of ${self.limit}"
        model = f"  last: {self.last_model}" if self.last_model else ""
        return f"shekel {bar(share)} ${spent:.6f}{limit}  calls {self.calls}{model}"

    @contextmanager
    def showing(self, live: bool) -> Iterator[None]:
        shown = live_line(self.status, sys.stderr) if live else None

        def loop() -> None:
            while not self._stop.wait(POLL):
                try:
                    with self._polling:
                        self.poll()
                except Exception:  # the status line fails open; the cap is in the store
                    continue
                if shown is not None:
                    shown.refresh()

        ticker = threading.Thread(target=loop, name="shekel-run-monitor", daemon=True)
        if shown is not None:
            shown.__enter__()
        ticker.start()
        try:
            yield
        finally:
            self._stop.set()
            ticker.join()
            if shown is not None:
                shown.__exit__(None, None, None)

    def report(self, exit_code: int, stopped: bool) -> dict[str, Any]:
        # All of the name's log, not since the run started: a store's clock (Redis's) may differ from this
        # host's, and the run's id alone tells its calls.
        entries = self._ours(self.store.log(self.name))
        by_model: dict[str, dict[str, Any]] = {}
        total = 0
        input_tokens = output_tokens = failed = 0
        for e in entries:
            model = e.get("model") or "(unknown)"
            row = by_model.setdefault(
                model, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_nano": 0, "providers": set()}
            )
            row["calls"] += e.get("outcome") in (None, "ok")  # answered; failed ones are counted apart
            row["input_tokens"] += int(e["input_tokens"])
            row["output_tokens"] += int(e["output_tokens"])
            row["cost_nano"] += int(e["cost_nano"])
            if e.get("provider"):
                row["providers"].add(e["provider"])
            total += int(e["cost_nano"])
            input_tokens += int(e["input_tokens"])
            output_tokens += int(e["output_tokens"])
            failed += e.get("outcome") not in (None, "ok")
        with contextlib.suppress(Exception):  # only for --warn-at: the report itself is read above
            self.poll()
        budget_spent = None
        if not self.private:  # the shared budget's own figure (every process's, in its window)
            with contextlib.suppress(Exception):
                budget_spent = str(self.budget.spent_exact)
        return {
            "budget_spent": budget_spent,
            "spent": str(from_nano(total)),
            "limit": None if self.limit is None else str(self.limit),
            "calls": len(entries) - failed,
            "failed_calls": failed,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "by_model": {
                model: {
                    "calls": row["calls"],
                    "input_tokens": row["input_tokens"],
                    "output_tokens": row["output_tokens"],
                    "spent": str(from_nano(row["cost_nano"])),
                    "providers": sorted(row["providers"]),
                }
                for model, row in sorted(by_model.items())
            },
            "refused": _refusals(self.config["refusals"], self.name),
            "exit_code": exit_code,
            "stopped_by_budget": stopped,
            "budget": self.name,
            "max_calls": self.config["max_llm_calls"],
            "max_tokens": self.config["max_total_tokens"],
            "store": None if self.private else self.store.display,
        }


def _runs_own(budget_name: object, run_name: str) -> bool:
    """Whether a refusal is the run's budget's (its options can help), not one of the program's budgets."""
    return isinstance(budget_name, str) and budget_name.split(" (", 1)[0] == run_name


def _refusals(path: str, run_name: str) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    found = []
    for raw in text.splitlines():
        try:
            refusal = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(refusal, dict):
            continue
        if isinstance(refusal.get("message"), str) and _runs_own(refusal.get("budget"), run_name):
            refusal["message"] = _args.for_command(
                refusal["message"]
            )  # the command's options, not budget()'s
        found.append(refusal)
    return found


def _print_summary(report: dict[str, Any]) -> None:
    limit = None if report["limit"] is None else Decimal(report["limit"])
    spent = Decimal(report["spent"])
    failed = f" (+{report['failed_calls']} failed)" if report["failed_calls"] else ""
    counted = (
        f"{report['calls']} calls{failed}, tokens {report['input_tokens']} in / {report['output_tokens']} out"
    )
    # A shared budget: its spend (every process's) of its limit, then this run's.
    shared = report.get("budget_spent")
    whole = spent if shared is None else Decimal(shared)
    share = f" ({whole / limit:.1%})" if limit else ""
    this_run = "" if shared is None else f" in budget {report['budget']!r}; this run {_render.usd(spent)}"
    _render.line(
        f"shekel: spent {_render.usd(whole)} of {_render.usd(limit)}{share}{this_run}, {counted}",
        style="bold",
    )
    if report["by_model"]:
        _render.table(
            ["model", "provider", "calls", "input", "output", "spent"],
            [
                [
                    m,
                    ", ".join(r["providers"]) or "-",
                    r["calls"],
                    r["input_tokens"],
                    r["output_tokens"],
                    _render.usd(Decimal(r["spent"])),
                ]
                for m, r in report["by_model"].items()
            ],
            stream=sys.stderr,
            numeric_from=2,
        )
    refused = report["refused"]
    if refused:
        reasons: dict[str, int] = {}
        for each in refused:
            reasons[each["reason"]] = reasons.get(each["reason"], 0) + 1
        text = ", ".join(f"{n} by {reason}" for reason, n in sorted(reasons.items()))
        last = "" if report["stopped_by_budget"] else f"; last: {refused[-1]['message']}"
        _render.line(f"shekel: {len(refused)} call(s) refused ({text}){last}", stream=sys.stderr, style="red")
