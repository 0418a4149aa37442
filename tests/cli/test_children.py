"""Processes a program starts share the cap of ``shekel run``: multiprocessing (spawn and fork),
ProcessPoolExecutor and subprocess running Python. Four workers each chat until refused: together they
never pass the cap, and every call any of them made is in the run's report."""

from __future__ import annotations

import json
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

from .conftest import Shekel, assert_clean

WORKER = textwrap.dedent(
    """
    import sys
    from huggingface_hub import InferenceClient
    from shekel import BudgetExceededError, current_budget

    def work(url):
        assert current_budget() is not None, "not inside the run's budget"
        client = InferenceClient(base_url=url)
        calls = 0
        try:
            while True:
                client.chat_completion([{"role": "user", "content": "hi there"}], model="m", max_tokens=5)
                calls += 1
        except BudgetExceededError:
            return calls
    """
)

PROGRAMS = {
    "spawn": """
        import multiprocessing, os, sys
        from worker import work
        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(4) as pool:
                print(sum(pool.map(work, [sys.argv[1]] * 4)), os.getpid())
        """,
    "fork": """
        import multiprocessing, os, sys
        from worker import work
        if __name__ == "__main__":
            with multiprocessing.get_context("fork").Pool(4) as pool:
                print(sum(pool.map(work, [sys.argv[1]] * 4)), os.getpid())
        """,
    "pool-executor": """
        import os, sys
        from concurrent.futures import ProcessPoolExecutor
        from worker import work
        if __name__ == "__main__":
            with ProcessPoolExecutor(4) as pool:
                print(sum(pool.map(work, [sys.argv[1]] * 4)), os.getpid())
        """,
    "subprocess": """
        import os, subprocess, sys
        code = "import sys; from worker import work; print(work(sys.argv[1]))"
        workers = [
            subprocess.Popen([sys.executable, "-c", code, sys.argv[1]], stdout=subprocess.PIPE, text=True, cwd=sys.path[0])
            for _ in range(4)
        ]
        print(sum(int(w.communicate()[0]) for w in workers), os.getpid())
        """,
    "spawn-main": """
        import multiprocessing, os, sys
        from huggingface_hub import InferenceClient
        from shekel import BudgetExceededError

        def chat(url):  # defined in __main__: pickled by name, found again in the spawned child
            client, calls = InferenceClient(base_url=url), 0
            try:
                while True:
                    client.chat_completion([{"role": "user", "content": "hi there"}], model="m", max_tokens=5)
                    calls += 1
            except BudgetExceededError:
                return calls

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(4) as pool:
                print(sum(pool.map(chat, [sys.argv[1]] * 4)), os.getpid())
        """,
    "threads": """
        import os, sys
        from concurrent.futures import ThreadPoolExecutor
        from worker import work
        with ThreadPoolExecutor(4) as pool:
            print(sum(pool.map(work, [sys.argv[1]] * 4)), os.getpid())
        """,
}


@pytest.mark.parametrize("how", list(PROGRAMS))
def test_children_share_the_cap(
    how: str, shekel: Shekel, server: FakeInferenceServer, tmp_path: Path
) -> None:
    if how == "fork" and sys.platform != "linux":
        pytest.skip("fork is Linux's default start method")
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "main.py").write_text(textwrap.dedent(PROGRAMS[how]))
    done = shekel(
        "run", "--budget", "0.2", "--price-per-1k", "1,2", "--json", "r.json", "main.py", server.url
    )
    assert done.returncode == 0, done.stderr
    assert_clean(done.stdout, done.stderr)
    report = json.loads((tmp_path / "r.json").read_text())
    sent = [r for r in server.requests if r.route == "chat.completions"]
    made_text, main_pid = done.stdout.split()
    made = int(made_text)
    assert made == report["calls"] == len(sent) > 4
    cost = sum(Decimal("0.001") * r.input_tokens + Decimal("0.002") * r.output_tokens for r in sent)
    assert Decimal(report["spent"]) == cost <= Decimal("0.2")
    # The workers went on until the shared cap refused them (a call holds its worst case: 5 output
    # tokens and a prompt estimate that errs high, so some room is left unspent).
    assert cost > Decimal("0.1")
    # Each of the 4 tasks ended refused, in the program's process (threads) or in its children (a pool may
    # hand several tasks to one worker process that started first, so the count of pids is not fixed).
    pids = [each["pid"] for each in report["refused"]]
    assert len(pids) >= 4
    if how == "threads":
        assert set(pids) == {int(main_pid)}
    else:
        assert int(main_pid) not in pids
        assert len(set(pids)) >= (4 if how == "subprocess" else 1)


def test_a_child_that_cannot_join_the_budget_stops(shekel: Shekel, tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(
        textwrap.dedent(
            """
            import json, os, subprocess, sys
            env = dict(os.environ, SHEKEL_RUN=json.dumps({"shekel_run": 1, "store": "ftp://nowhere", "name": "x"}))
            child = subprocess.run([sys.executable, "-c", "print('spent outside the cap')"], env=env, capture_output=True, text=True)
            print(child.returncode, child.stdout.strip() or "-", child.stderr.strip())
            """
        )
    )
    done = shekel("run", "--budget", "1", "main.py")
    code, out, message = done.stdout.split(" ", 2)
    assert (code, out) == ("3", "-")
    assert message.startswith("shekel: this process could not join the budget of `shekel run`")


def test_without_shekel_run_the_pth_does_nothing(tmp_path: Path) -> None:
    import subprocess

    from .conftest import environment

    done = subprocess.run(
        [sys.executable, "-c", "import sys; print('shekel' in sys.modules)"],
        env=environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"
    pth = [Path(p) / "shekel_autorun.pth" for p in sys.path if (Path(p) / "shekel_autorun.pth").exists()]
    assert pth, "shekel_autorun.pth is not installed in site-packages"


def test_a_run_inside_a_run_is_held_to_the_outer_cap(
    shekel: Shekel, server: FakeInferenceServer, tmp_path: Path
) -> None:
    (tmp_path / "worker.py").write_text(WORKER)
    # The inner run's program starts a grandchild process: it joins both budgets.
    (tmp_path / "inner.py").write_text(
        textwrap.dedent(
            """
            import os, subprocess, sys
            code = "import sys; from worker import work; print(work(sys.argv[1]))"
            print(subprocess.run([sys.executable, "-c", code, sys.argv[1]], capture_output=True, text=True, cwd=sys.path[0]).stdout.strip())
            """
        )
    )
    (tmp_path / "outer.py").write_text(
        textwrap.dedent(
            """
            import os, subprocess, sys
            inner = [sys.executable, "-m", "shekel", "run", "--quiet", "--budget", "5", "--price-per-1k", "1,2", "--json", "inner.json", "inner.py", sys.argv[1]]
            print(subprocess.run(inner, capture_output=True, text=True).stdout.strip())
            """
        )
    )
    done = shekel(
        "run", "--budget", "0.2", "--price-per-1k", "1,2", "--json", "r.json", "outer.py", server.url
    )
    assert done.returncode == 0, done.stderr
    sent = [r for r in server.requests if r.route == "chat.completions"]
    cost = sum(Decimal("0.001") * r.input_tokens + Decimal("0.002") * r.output_tokens for r in sent)
    assert int(done.stdout) == len(sent) > 0 and cost <= Decimal("0.2")
    outer, inner = (json.loads((tmp_path / n).read_text()) for n in ("r.json", "inner.json"))
    assert outer["calls"] == inner["calls"] == len(sent)
    assert Decimal(outer["spent"]) == Decimal(inner["spent"]) == cost


def test_a_relative_store_is_the_same_file_for_children_in_another_directory(
    shekel: Shekel, server: FakeInferenceServer, tmp_path: Path
) -> None:
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "main.py").write_text(
        textwrap.dedent(
            """
            import os, subprocess, sys
            code = "import sys; sys.path.insert(0, '..'); from worker import work; print(work(sys.argv[1]))"
            print(subprocess.run([sys.executable, "-c", code, sys.argv[1]], capture_output=True, text=True, cwd="elsewhere").stdout.strip())
            """
        )
    )
    args = ["--budget", "0.1", "--price-per-1k", "1,2", "--store", "sqlite:///budgets.db", "--name", "job"]
    done = shekel("run", *args, "--json", "r.json", "main.py", server.url)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "elsewhere" / "budgets.db").exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert (
        report["calls"] == int(done.stdout) > 0
        and report["store"] == f"sqlite:///{tmp_path.resolve()}/budgets.db"
    )


@pytest.mark.parametrize("value", ["1", '{"x": 1}', "[1]", '{"shekel_run": 99, "name": "x"}'])
def test_a_shekel_run_value_shekel_did_not_write_is_ignored_with_one_line(value: str) -> None:
    import subprocess

    from shekel._autorun import parse

    from .conftest import environment

    assert parse(value) is None and parse('{"shekel_run": 1, "name": "x"}') == {"shekel_run": 1, "name": "x"}
    done = subprocess.run(
        [sys.executable, "-c", "from shekel._process import process_budget; print(process_budget())"],
        env=environment(SHEKEL_RUN=value),
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "None")  # not joined
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("shekel: ignoring SHEKEL_RUN")
