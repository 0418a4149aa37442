"""``shekel run``: a program inside a budget, its exit codes, its summary and its JSON report."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

from .conftest import TOKEN, Shekel, assert_clean, environment

PRICE = "0.1,0.2"  # USD per 1k tokens: $0.0001 per input token, $0.0002 per output token


def chat_requests(server: FakeInferenceServer) -> list[object]:
    return [r for r in server.requests if r.route == "chat.completions"]


def test_a_program_stopped_by_its_budget_exits_3_with_a_json_report(
    shekel: Shekel, server: FakeInferenceServer, chat_script: Path, tmp_path: Path
) -> None:
    done = shekel(
        "run", "--budget", "0.05", "--price-per-1k", PRICE, "--json", "out.json", str(chat_script), server.url
    )
    assert done.returncode == 3, done.stderr
    assert_clean(done.stdout, done.stderr)
    assert "the budget stopped the program" in done.stderr and "spent $" in done.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert {
        "spent",
        "limit",
        "calls",
        "input_tokens",
        "output_tokens",
        "by_model",
        "refused",
        "exit_code",
        "stopped_by_budget",
    } <= set(report)
    sent = chat_requests(server)
    assert report["exit_code"] == 3 and report["stopped_by_budget"] is True
    assert report["calls"] == len(sent) > 0
    assert report["input_tokens"] == sum(r.input_tokens for r in sent)
    assert report["output_tokens"] == sum(r.output_tokens for r in sent)
    spent = Decimal(report["spent"])
    assert spent == sum(
        Decimal("0.0001") * r.input_tokens + Decimal("0.0002") * r.output_tokens for r in sent
    )
    assert Decimal(report["limit"]) == Decimal("0.05") >= spent
    assert report["by_model"]["m"]["calls"] == len(sent)
    (refused,) = report["refused"]
    assert refused["reason"] == "usd" and refused["error"] == "BudgetExceededError"


def test_argv_main_path_and_the_programs_exit_code_pass_through(shekel: Shekel, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "helper.py").write_text("VALUE = 'imported beside the script'\n")
    (tmp_path / "sub" / "prog.py").write_text(
        textwrap.dedent(
            """
            import json, sys
            import helper
            print(json.dumps({"argv": sys.argv, "name": __name__, "path0": sys.path[0], "helper": helper.VALUE}))
            sys.exit(7)
            """
        )
    )
    for console_script in (False, True):
        done = shekel(
            "run", "--quiet", "sub/prog.py", "--budget", "x", "-m", "y", console_script=console_script
        )
        assert done.returncode == 7, done.stderr
        seen = json.loads(done.stdout)
        assert seen == {
            "argv": [
                "sub/prog.py",
                "--budget",
                "x",
                "-m",
                "y",
            ],  # after SCRIPT, every argument is the program's
            "name": "__main__",
            "path0": str((tmp_path / "sub").resolve()),
            "helper": "imported beside the script",
        }
        assert "0 calls counted: is the client one shekel counts?" in done.stderr


def test_a_module_runs_as_python_dash_m_would(shekel: Shekel, tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "job.py").write_text(
        "import json, sys\nprint(json.dumps({'argv': sys.argv, 'name': __name__, 'path0': sys.path[0]}))\n"
        "raise SystemExit('failed: the job says why')\n"
    )
    done = shekel("run", "--budget", "1", "-m", "pkg.job", "--flag", "value")
    assert done.returncode == 1
    seen = json.loads(done.stdout)
    assert seen["argv"] == [str((tmp_path / "pkg" / "job.py").resolve()), "--flag", "value"]
    assert seen["name"] == "__main__" and seen["path0"] == str(tmp_path)
    assert "failed: the job says why" in done.stderr


def test_a_program_that_catches_the_refusal_exits_as_it_chooses(
    shekel: Shekel, server: FakeInferenceServer, tmp_path: Path
) -> None:
    (tmp_path / "careful.py").write_text(
        textwrap.dedent(
            """
            import sys
            from huggingface_hub import InferenceClient
            from shekel import BudgetExceededError

            client = InferenceClient(base_url=sys.argv[1])
            try:
                while True:
                    client.chat_completion([{"role": "user", "content": "hi"}], model="m", max_tokens=5)
            except BudgetExceededError:
                print("stopped politely")
            """
        )
    )
    done = shekel("run", "--max-calls", "3", "--json", "r.json", "careful.py", server.url)
    assert done.returncode == 0 and done.stdout.strip() == "stopped politely"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["calls"] == 3 == len(chat_requests(server)) and report["stopped_by_budget"] is False
    assert report["refused"][0]["reason"] == "calls" and report["limit"] is None


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "--budget", "-1", "x.py"], "--budget must be a number of US dollars >= 0"),
        (["run", "--budget", "ten", "x.py"], "--budget must be a number of US dollars"),
        (["run", "--budget", "1", "missing.py"], "cannot open file 'missing.py'"),
        (["run", "-m", "no_such_module_here"], "no module named 'no_such_module_here'"),
        (["run", "--price-per-1k", "1", "x.py"], "--price-per-1k takes the input and output prices"),
        (["run", "--max-calls", "2.5", "x.py"], "--max-calls must be a whole number"),
        (["run", "--warn-at", "0.8", "x.py"], "--warn-at is a fraction of --budget"),
        (["run", "--store", "sqlite:///s.db", "x.py"], "--store needs --name NAME"),
        (
            ["run", "--store", "ftp://x", "--name", "n", "x.py"],
            "store URL scheme 'ftp' is not one shekel knows",
        ),
        (["run", "--budget", "1", "--window", "day", "x.py"], "--window applies to a shared budget"),
        (["run", "--fallback-model", "small", "x.py"], "--fallback-model M and --fallback-at F go together"),
        (["run"], "give the program to run"),
        (["run", "--budjet", "1", "x.py"], "unrecognized arguments: --budjet"),
        (["report", "--store", "sqlite:///s.db", "--since", "yesterday"], "--since takes a duration"),
        (["report", "--store", "sqlite:///s.db", "--plot", "spend.pdf"], "--plot writes a .png or a .svg"),
        (["reset", "--store", "sqlite:///s.db", "job"], "add --yes"),
        (["status"], "the following arguments are required: --store"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_no_traceback(
    shekel: Shekel, tmp_path: Path, args: list[str], says: str
) -> None:
    (tmp_path / "x.py").write_text("print('never run')\n")
    done = shekel(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert_clean(done.stdout, done.stderr)
    assert "never run" not in done.stdout


def test_shekel_budget_usd_is_the_default_budget(
    shekel: Shekel, server: FakeInferenceServer, chat_script: Path, tmp_path: Path
) -> None:
    env = environment(SHEKEL_BUDGET_USD="0.02")
    done = shekel(
        "run",
        "--price-per-1k",
        PRICE,
        "--json",
        "r.json",
        "--warn-at",
        "0.5",
        str(chat_script),
        server.url,
        env=env,
    )
    assert done.returncode == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["limit"] == "0.02" and Decimal(report["spent"]) <= Decimal("0.02")
    assert "past --warn-at 0.5" in done.stderr
    bad = shekel("run", str(chat_script), server.url, env=environment(SHEKEL_BUDGET_USD="lots"))
    assert bad.returncode == 2 and "SHEKEL_BUDGET_USD must be a number" in bad.stderr


def test_a_shared_store_keeps_the_spend_between_runs(
    shekel: Shekel, server: FakeInferenceServer, chat_script: Path, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'budgets.db'}"
    common = ["--budget", "0.05", "--price-per-1k", PRICE, "--store", store, "--name", "nightly"]
    first = shekel("run", *common, "--json", "1.json", str(chat_script), server.url, "3")
    assert first.returncode == 0, first.stderr
    second = shekel("run", *common, "--json", "2.json", str(chat_script), server.url)
    assert second.returncode == 3
    one, two = (json.loads((tmp_path / n).read_text()) for n in ("1.json", "2.json"))
    assert one["calls"] == 3 and Decimal(one["spent"]) + Decimal(two["spent"]) <= Decimal("0.05")
    assert two["store"] == store and one["budget"] == "nightly"


def test_the_live_line_shows_on_a_terminal_only(
    shekel: Shekel, server: FakeInferenceServer, chat_script: Path, tmp_path: Path
) -> None:
    args = ["run", "--budget", "0.5", "--price-per-1k", PRICE, str(chat_script), server.url, "4"]
    piped = shekel(*args)
    assert piped.returncode == 0
    assert "\r" not in piped.stderr and "\x1b[" not in piped.stderr and "calls 0" not in piped.stderr
    assert piped.stdout == "done 4\n"

    # stderr on a pseudo-terminal, stdout on a pipe: the line is drawn on stderr, the output stays clean.
    main, side = pty.openpty()
    seen = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the other side is closed
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shekel", *args],
            cwd=tmp_path,
            env=environment(COLUMNS="120"),
            stdout=subprocess.PIPE,
            stderr=side,
            text=True,
        )
        os.close(side)
        out, _ = process.communicate(timeout=120)
        reader.join(timeout=30)
    finally:
        os.close(main)
    assert process.returncode == 0 and out == "done 4\n"
    text = bytes(seen).decode("utf-8", "replace")
    assert "shekel [" in text and "calls" in text and "spent $" in text
    assert TOKEN not in text


def test_quiet_prints_no_summary(shekel: Shekel, server: FakeInferenceServer, chat_script: Path) -> None:
    done = shekel(
        "run", "--quiet", "--budget", "1", "--price-per-1k", PRICE, str(chat_script), server.url, "2"
    )
    assert done.returncode == 0 and done.stdout == "done 2\n" and done.stderr == ""


def test_every_help_has_an_example(shekel: Shekel) -> None:
    for command in ([], ["run"], ["status"], ["report"], ["prices"], ["reset"]):
        done = shekel(*command, "--help")
        assert done.returncode == 0 and "example" in done.stdout and "shekel " in done.stdout, command


def test_an_error_raised_from_a_refusal_is_the_budget_stopping_the_program(
    shekel: Shekel, tmp_path: Path
) -> None:
    (tmp_path / "wrapped.py").write_text(
        textwrap.dedent(
            """
            from huggingface_hub import InferenceClient
            from shekel import BudgetExceededError, budget
            try:
                with budget(max_usd=0.000001, price_per_1k_tokens={"input": 1, "output": 1}):
                    InferenceClient(base_url="http://127.0.0.1:9").chat_completion(
                        [{"role": "user", "content": "hi"}], model="m", max_tokens=5)
            except BudgetExceededError as refusal:
                raise RuntimeError("the agent gave up") from refusal
            """
        )
    )
    done = shekel("run", "--quiet", "wrapped.py")
    assert done.returncode == 3, done.stderr
    assert "the budget stopped the program" in done.stderr and "Traceback" not in done.stderr
