"""Review round 15a: the ``shekel`` command rewrites the advice of every refusal into its own options
(0809146, ``cli._args.for_command``), also of a refusal its options do not control."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

pytest.importorskip("huggingface_hub")

#: A program with a budget of its own, tighter than the run's: $0.02 (or 1 call) for one step of its work.
PROGRAM = textwrap.dedent(
    """
    import sys
    from huggingface_hub import InferenceClient
    from shekel import budget

    client = InferenceClient(base_url=sys.argv[1])
    limits = {"usd": {"max_usd": 0.02}, "calls": {"max_llm_calls": 1}}[sys.argv[2]]
    with budget(name="step", price_per_1k_tokens={"input": 1.0, "output": 2.0}, **limits):
        for _ in range(10):
            client.chat_completion([{"role": "user", "content": "hi there"}], model="m", max_tokens=5)
    """
)


@pytest.mark.parametrize(("reason", "option"), [("usd", "--budget"), ("calls", "--max-calls")])
def test_a_refusal_by_the_programs_own_budget_does_not_advise_the_runs_options(
    server: FakeInferenceServer, tmp_path: Path, reason: str, option: str
) -> None:
    """docs/cli.md: `shekel run` runs a program "inside a budget, as `python agent.py` would"; CHANGELOG
    (0809146): "its stop line and errors give its own options (`--budget`, `--fallback-model`/
    `--fallback-at`, `--max-calls`, ...) where the library's say `max_usd=`, `fallback={...}`...".

    `shekel run --budget 5 --max-calls 100 prog.py`, where the program opens its own
    `budget(max_usd=0.02, name="step")` (or `max_llm_calls=1`) around a step of its work, and that budget
    stops it. Observed stop line: "budget 'shekel-run/step' cannot pay for the next call ... Raise
    --budget, or set --fallback-model M --fallback-at F." (or "... Raise --max-calls."): the run has $5
    and 100 calls left, and no option of the command changes the program's own cap; what the user must do
    is what the library said, raise `max_usd` (`max_llm_calls`) of the budget named 'step' in the program.

    Cause: `_run._run_program` passes every refusal through `_args.for_command`, a text replacement of
    `errors.USD_ADVICE` / `CALLS_ADVICE` / ... whatever budget refused; it should only apply where the
    refusing budget is the run's (its `budget_name` is the run's budget, 'shekel-run' or `--name`)."""
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shekel",
            "run",
            "--budget",
            "5",
            "--max-calls",
            "100",
            "--price-per-1k",
            "1,2",
            str(script),
            server.url,
            reason,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    stop = next(line for line in done.stderr.splitlines() if "stopped the program" in line)
    assert done.returncode == 3 and "'shekel-run/step'" in stop, done.stderr
    assert option not in stop, stop


#: A program that stops cleanly when its budget refuses a call (as the library's advice suggests).
CATCHING = textwrap.dedent(
    """
    import sys
    from huggingface_hub import InferenceClient
    from shekel import BudgetExceededError

    client = InferenceClient(base_url=sys.argv[1])
    try:
        for _ in range(10):
            client.chat_completion([{"role": "user", "content": "hi there"}], model="m", max_tokens=5)
    except BudgetExceededError:
        print("stopping cleanly")
    """
)


@pytest.mark.parametrize(
    ("limit", "library"), [(["--budget", "0.05"], "max_usd"), (["--max-calls", "2"], "max_llm_calls")]
)
def test_the_summary_gives_a_refusal_of_the_runs_budget_with_the_commands_options(
    server: FakeInferenceServer, tmp_path: Path, limit: list[str], library: str
) -> None:
    """CHANGELOG (0809146): "The `shekel` command (review 14b): its stop line and errors give its own options
    (`--budget`, `--fallback-model`/`--fallback-at`, `--max-calls`, `--max-tokens`, ...) where the
    library's say `max_usd=`, `fallback={...}`, `window=` or `b.reset()`". docs/cli.md: the summary gives
    "what was refused and why".

    `shekel run --budget 0.05 prog.py` (or `--max-calls 2`), where the program catches
    `BudgetExceededError` to stop cleanly (exit 0: no stop line). The summary's last line quotes the
    refusal of the run's own budget 'shekel-run' with the library's advice: "... Raise max_usd, lower
    max_tokens, or set fallback={'at_pct': ..., 'model': <a cheaper model>}." (or "Raise max_llm_calls,
    ..."): arguments the user of the command never wrote and cannot set. The same refusal, uncaught, is
    rewritten to "Raise --budget ...".

    Cause: `_run._print_summary` prints `refused[-1]['message']` (the refusal log's message) as it is;
    only `_run._run_program`'s stop line and `cli.main`'s error line go through `_args.for_command`."""
    script = tmp_path / "prog.py"
    script.write_text(CATCHING)
    done = subprocess.run(
        [sys.executable, "-m", "shekel", "run", *limit, "--price-per-1k", "1,2", str(script), server.url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = next(line for line in done.stderr.splitlines() if "refused" in line and "last:" in line)
    assert done.returncode == 0 and "'shekel-run'" in last, done.stderr
    assert library not in last and "fallback={" not in last, last
