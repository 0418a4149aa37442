"""The ``shekel`` command: ``run`` a program inside a budget, ``status``, ``report``, ``prices``, ``reset``.

Installed as the ``shekel`` console script and as ``python -m shekel``. argparse from the standard library;
rich (``pip install "shekel[cli]"``) for tables, colour and the live line when it is installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from ..errors import ShekelError
from ._args import UsageError, for_command
from ._codes import EXIT_BUDGET, EXIT_ERROR, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_BUDGET", "EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "main"]

_Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, with bad arguments reported in one line (exit code 2), never with a traceback."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


_FORMAT = argparse.RawDescriptionHelpFormatter

MAIN_HELP = """\
Hard spending limits for LLM calls, from the command line.

examples:
  shekel run --budget 0.50 agent.py --task "summarise the news"
  shekel status --store sqlite:///budgets.db
  shekel report --store sqlite:///budgets.db --since 7d --by model --plot spend.png
  shekel prices meta-llama/Llama-3.1-8B-Instruct --provider cerebras
"""

RUN_HELP = """\
Run a Python program inside a budget, as `python SCRIPT ARGS` (or `python -m MODULE ARGS`) would: same
sys.argv, __main__ and sys.path. Processes the program starts (multiprocessing, ProcessPoolExecutor,
subprocess running Python) share the cap. Options go before SCRIPT or -m; what follows is the program's.

exit codes: the program's own; 3 when the budget stopped it (a BudgetExceededError escaped); 2 for bad
arguments. A summary goes to stderr at the end; --json FILE writes it as JSON.

examples:
  shekel run --budget 0.50 agent.py --task "summarise the news"
  shekel run --budget 2 --max-calls 100 --price-per-1k 0.5,1.5 -m my_eval.main --split test
  SHEKEL_BUDGET_USD=1 shekel run --json spend.json --quiet job.py
  shekel run --budget 20 --store sqlite:///budgets.db --name nightly --window day eval.py
"""

STATUS_HELP = """\
The shared budgets in a store: spent, reserved (calls in flight), limit, window and when it resets.

examples:
  shekel status --store sqlite:///budgets.db
  shekel status --store redis://localhost:6379/0 tenant:42 tenant:43 --json
"""

REPORT_HELP = """\
Spend over time, from the store's log of settled calls: a table (by model unless --by says otherwise),
and optionally JSON, CSV and a plot (cumulative spend and spend per period, stacked by the --by key,
with the budget's limit as a line; needs `pip install "shekel[plot]"`).

examples:
  shekel report --store sqlite:///budgets.db --since 7d
  shekel report --store sqlite:///budgets.db --name nightly --by day --csv spend.csv --plot spend.png
"""

PRICES_HELP = """\
The prices shekel charges: for one MODEL as shekel.prices() returns it (the highest provider's price
for an auto-routed call unless --provider says which), or every price it knows (SHEKEL_PRICING's file,
then the bundled Hugging Face Inference Providers data).

examples:
  shekel prices meta-llama/Llama-3.1-8B-Instruct
  shekel prices meta-llama/Llama-3.1-8B-Instruct --provider cerebras
  shekel prices --provider cerebras
"""

RESET_HELP = """\
Clear a shared budget's spend, for every process (calls in flight keep their holds).

example:
  shekel reset --store sqlite:///budgets.db nightly --yes
"""


def build_parser() -> _Parser:
    parser = _Parser(prog="shekel", description=MAIN_HELP, formatter_class=_FORMAT)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"shekel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run", help="run a Python program inside a budget", description=RUN_HELP, formatter_class=_FORMAT
    )
    run.add_argument("--budget", metavar="USD", help="the cap in US dollars (default: $SHEKEL_BUDGET_USD)")
    run.add_argument("--max-calls", metavar="N", help="the most LLM calls, across every process")
    run.add_argument("--max-tokens", metavar="N", help="the most input plus output tokens")
    run.add_argument(
        "--warn-at", metavar="F", help="warn once on stderr when this fraction of --budget is spent"
    )
    run.add_argument(
        "--price-per-1k", metavar="IN,OUT", help="USD per 1,000 input and output tokens, for every model"
    )
    run.add_argument("--pricing", metavar="FILE", help="a TOML or JSON pricing file (docs/pricing.md)")
    run.add_argument(
        "--fallback-model", metavar="M", help="switch to model M once --fallback-at of the budget is spent"
    )
    run.add_argument(
        "--fallback-at", metavar="F", help="the fraction of --budget that switches to --fallback-model"
    )
    run.add_argument(
        "--store", metavar="URL", help="a store to keep the budget in (default: a private one for the run)"
    )
    run.add_argument("--name", metavar="NAME", help="the budget's name in --store")
    run.add_argument(
        "--window", metavar="W", help="with --store: the limits apply per window (1h, 24h, day, week, month)"
    )
    run.add_argument("--json", metavar="FILE", help="write the summary as JSON to FILE")
    run.add_argument(
        "--quiet", "-q", action="store_true", help="no live line and no summary (warnings still show)"
    )
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m MODULE")
    run.add_argument("script", nargs="?", metavar="SCRIPT", help="the program to run")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the program's arguments")
    run.set_defaults(handler=_run)

    status = commands.add_parser(
        "status", help="the shared budgets in a store", description=STATUS_HELP, formatter_class=_FORMAT
    )
    status.add_argument(
        "--store", metavar="URL", required=True, help="sqlite:///path.db, redis://host:6379/0, ..."
    )
    status.add_argument("names", nargs="*", metavar="NAME", help="budgets to show (default: all)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=_status)

    report = commands.add_parser(
        "report",
        help="spend over time, as a table, JSON, CSV or a plot",
        description=REPORT_HELP,
        formatter_class=_FORMAT,
    )
    report.add_argument(
        "--store", metavar="URL", required=True, help="sqlite:///path.db, redis://host:6379/0, ..."
    )
    report.add_argument("--name", metavar="NAME", help="one budget (default: every budget in the store)")
    report.add_argument(
        "--since", metavar="WHEN", default="7d", help="a duration (30m, 24h, 7d) or a date (default: 7d)"
    )
    report.add_argument(
        "--by",
        choices=["model", "provider", "budget", "day", "hour"],
        default="model",
        help="group by (default: model)",
    )
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    report.add_argument("--plot", metavar="FILE", help="also draw a plot, FILE.png or FILE.svg")
    report.set_defaults(handler=_report)

    prices = commands.add_parser(
        "prices", help="the prices shekel charges", description=PRICES_HELP, formatter_class=_FORMAT
    )
    prices.add_argument("model", nargs="?", metavar="MODEL", help="a model id (default: every known price)")
    prices.add_argument("--provider", metavar="P", help="an Inference Provider (together, cerebras, ...)")
    prices.add_argument("--json", action="store_true", help="print JSON instead of a table")
    prices.set_defaults(handler=_prices)

    reset = commands.add_parser(
        "reset", help="clear a shared budget", description=RESET_HELP, formatter_class=_FORMAT
    )
    reset.add_argument(
        "--store", metavar="URL", required=True, help="sqlite:///path.db, redis://host:6379/0, ..."
    )
    reset.add_argument("name", metavar="NAME", help="the budget to clear")
    reset.add_argument("--yes", action="store_true", help="yes, clear it (for every process)")
    reset.set_defaults(handler=_reset)
    return parser


def _run(args: argparse.Namespace) -> int:
    from ._run import run

    return run(args)


def _status(args: argparse.Namespace) -> int:
    from ._store_commands import status

    return status(args)


def _report(args: argparse.Namespace) -> int:
    from ._store_commands import report

    return report(args)


def _prices(args: argparse.Namespace) -> int:
    from ._prices import show

    return show(args)


def _reset(args: argparse.Namespace) -> int:
    from ._store_commands import reset

    return reset(args)


def _split_run(parser: _Parser, argv: list[str]) -> list[str]:
    """``shekel run`` arguments with the program's own put after ``--``: options end at SCRIPT or -m MODULE,
    and nothing after them is shekel's (``shekel run job.py --budget 3`` passes ``--budget 3`` to job.py)."""
    run_parser = _subparser(parser, "run")
    takes_value = {
        option for action in run_parser._actions for option in action.option_strings if action.nargs != 0
    }
    for i, token in enumerate(argv):
        if token == "--":
            return argv
        if token == "-m" or (token.startswith("-m") and not token.startswith("--")):
            module = argv[i + 1] if token == "-m" and i + 1 < len(argv) else token[2:]
            rest = argv[i + 2 :] if token == "-m" else argv[i + 1 :]
            if not module:
                raise UsageError("-m needs a module name: shekel run -m package.module [ARGS...]")
            return [*argv[:i], "-m", module, "--", *rest]
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            if name in takes_value and "=" not in token and i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value (see shekel run --help)")
            continue
        if i > 0 and argv[i - 1].split("=", 1)[0] in takes_value and "=" not in argv[i - 1]:
            continue
        return [*argv[:i], "--", *argv[i:]]
    return argv


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shekel`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        if tokens and tokens[0] == "run":
            tokens = ["run", *_split_run(parser, tokens[1:])]
        args = parser.parse_args(tokens)
        if args.command == "run":
            args = _target(args)
        handler: _Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return EXIT_USAGE
        return handler(args)
    except UsageError as error:
        sys.stderr.write(f"{_command(tokens)}: error: {for_command(error)}\n")
        return EXIT_USAGE
    except ShekelError as error:  # a store that cannot be reached, say: one line, no traceback
        sys.stderr.write(f"{_command(tokens)}: error: {for_command(error)}\n")
        return EXIT_ERROR


def _command(tokens: list[str]) -> str:
    known = ("run", "status", "report", "prices", "reset")
    return f"shekel {tokens[0]}" if tokens and tokens[0] in known else "shekel"


def _target(args: argparse.Namespace) -> argparse.Namespace:
    """After ``--``: SCRIPT and its arguments, or (with -m) the module's arguments."""
    rest = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.script == "--":
        args.script = None
    if args.module is not None:
        if args.script is not None:
            rest = [args.script, *rest]
        args.script = None
    elif args.script is None and rest:
        args.script, rest = rest[0], rest[1:]
    args.args = rest
    return args
