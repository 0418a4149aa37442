"""``shekel run`` should behave exactly as ``python SCRIPT`` does, and refuse bad input before running."""

from __future__ import annotations

import textwrap
from pathlib import Path

from .conftest import Run, environment


def test_dunder_file_is_absolute_as_python_sets_it(shekel: Run, python: Run, tmp_path: Path) -> None:
    """Expected: ``__file__`` of the script is the absolute path, as ``python probe.py`` gives it since 3.9
    (observed for python: '/tmp/.../probe.py'). Observed under ``shekel run probe.py``: 'probe.py', the
    relative path as typed (runpy.run_path), so a program that chdirs and then opens files next to
    ``__file__`` breaks only under shekel."""
    (tmp_path / "probe.py").write_text("print(__file__)\n")
    plain = python("probe.py")
    under = shekel("run", "--quiet", "probe.py")
    assert plain.stdout.strip() == str(tmp_path / "probe.py")
    assert under.stdout.strip() == plain.stdout.strip()


def test_a_traceback_shows_only_the_programs_frames(shekel: Run, python: Run, tmp_path: Path) -> None:
    """Expected: an uncaught exception prints the traceback python prints (exit 1): frames of the program
    only, with the script's absolute path. Observed: the traceback starts with shekel's own frames
    (``shekel_core/cli/_run.py ... in _run_program``, ``<frozen runpy>`` x3: 4 extra frames) and names the
    script as 'exc.py' instead of its absolute path."""
    (tmp_path / "exc.py").write_text("def f():\n    raise ValueError('boom')\nf()\n")
    plain = python("exc.py")
    under = shekel("run", "--quiet", "exc.py")
    assert under.returncode == plain.returncode == 1
    tb = under.stderr[under.stderr.index("Traceback") :]
    tb = tb[: tb.index("ValueError: boom") + len("ValueError: boom")]
    assert tb == plain.stderr.strip()


def test_an_unrelated_error_raised_while_handling_a_refusal_is_the_programs_own(
    shekel: Run, tmp_path: Path
) -> None:
    """Expected: a program that catches a BudgetExceededError and then fails with an unrelated bug
    (FileNotFoundError opening a config file inside the ``except``) exits 1 with that bug's traceback, as
    python would: the budget did not stop it, the bug did (the issue: exit 3 when "a BudgetExceededError
    escaped"; here it was caught). Observed: exit 3, 'the budget stopped the program: [Errno 2] No such file
    or directory', and no traceback at all: the real bug is hidden behind the implicit ``__context__``."""
    (tmp_path / "handled.py").write_text(
        textwrap.dedent(
            """
            from shekel import budget
            from shekel.errors import BudgetExceededError
            from huggingface_hub import InferenceClient
            try:
                with budget(max_usd=0.000001, price_per_1k_tokens={"input": 1, "output": 1}):
                    InferenceClient(base_url="http://127.0.0.1:9").chat_completion(
                        [{"role": "user", "content": "hi"}], model="m", max_tokens=5)
            except BudgetExceededError:
                print("refused, falling back to the cache")
                open("/nonexistent/cache.json")
            """
        )
    )
    done = shekel("run", "--quiet", "handled.py")
    assert "refused, falling back to the cache" in done.stdout
    assert "Traceback" in done.stderr and "FileNotFoundError" in done.stderr
    assert done.returncode == 1, done.stderr


def test_an_empty_budget_argument_is_a_bad_argument(shekel: Run, tmp_path: Path) -> None:
    """Expected: ``--budget ""`` (e.g. ``--budget "$BUDGET"`` with BUDGET unset) is a bad argument: exit 2
    with one line, the program not run (the issue: "a negative or non-numeric budget" is exit 2). Observed:
    the empty value is taken as "no budget" and the program runs with no cap at all (exit 0,
    'spent $0.000000 of no limit'): a hard-cap tool silently uncapped by a typo."""
    (tmp_path / "ran.py").write_text("open('ran.marker', 'w').close()\n")
    done = shekel("run", "--budget", "", "ran.py")
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "ran.marker").exists()


def test_an_unwritable_json_path_does_not_cost_the_run(shekel: Run, tmp_path: Path) -> None:
    """Expected: ``--json /nonexistent/dir/out.json`` is refused up front (exit 2, one line, program not run),
    or at least the program's own exit code (7) and no traceback. Observed: the program runs to the end,
    then writing the report fails with a FileNotFoundError traceback, exit 1 (the program's 7 is lost and the
    summary is never printed)."""
    (tmp_path / "seven.py").write_text("import sys\nprint('working')\nsys.exit(7)\n")
    done = shekel("run", "--json", "/nonexistent/dir/out.json", "seven.py")
    assert "Traceback" not in done.stderr, done.stderr
    assert (done.returncode == 2 and "working" not in done.stdout) or done.returncode == 7, done.returncode


def test_an_unreachable_store_does_not_lose_the_programs_exit_code(shekel: Run, tmp_path: Path) -> None:
    """Expected: with ``--store redis://127.0.0.1:1/0`` (nothing listening) either the run is refused before
    the program starts (exit 2/1, program not run) or the program's exit code (7) comes back. Observed: the
    program runs ('working' printed) and then the report cannot read the store: exit 1, the program's 7 lost,
    no summary."""
    (tmp_path / "seven.py").write_text("import sys\nprint('working')\nsys.exit(7)\n")
    done = shekel("run", "--store", "redis://127.0.0.1:1/0", "--name", "job", "seven.py")
    ran = "working" in done.stdout
    assert (not ran and done.returncode in (1, 2)) or (ran and done.returncode == 7), (ran, done.returncode)


def test_a_directory_with_main_runs_as_python_runs_it(shekel: Run, python: Run, tmp_path: Path) -> None:
    """Expected: ``shekel run app/`` runs ``app/__main__.py`` as ``python app/`` does (prints 'app main',
    exit 0). Observed: exit 2, "cannot open file 'app': no such file" (is_file() only); same for a .pyz."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text("print('app main')\n")
    assert python("app").stdout.strip() == "app main"
    done = shekel("run", "--quiet", "app")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "app main"


def test_a_garbage_shekel_run_variable_does_not_break_other_python_processes(python: Run) -> None:
    """Expected: the .pth must never break a user's other Python processes: SHEKEL_RUN set to something that
    is not a run's configuration ('1', '{"x": 1}': a leftover, another tool's variable) is ignored (or a
    warning), and ``python -c "print('hello')"`` prints hello, exit 0. Observed: every Python process
    (pip included) exits 3 before running ('could not join the budget of `shekel run` (AttributeError: 'int'
    object has no attribute 'get')'; KeyError: 'name' for the second)."""
    for value in ("1", '{"x": 1}'):
        done = python("-c", "print('hello')", env=environment(SHEKEL_RUN=value))
        assert (done.returncode, done.stdout.strip()) == (0, "hello"), (value, done.returncode, done.stderr)
