"""docs/cli.md runs as written: its program (the Python block) is saved as agent.py, talking to the local
server, and every ``$ shekel ...`` line of its console blocks runs in order, in one folder. The report's
plot is the image the page shows (``SHEKEL_UPDATE_DOCS_IMAGES=1`` writes it back to docs/images/)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

from .conftest import assert_clean, environment

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
IMAGE = PAGE.parent / "images" / "cli-report.png"
PNG = b"\x89PNG\r\n\x1a\n"


def commands(page: Path) -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", page.read_text(), flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_the_page_runs(server: FakeInferenceServer, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (program,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    (tmp_path / "agent.py").write_text(program)
    env = environment(LLM_URL=server.url)
    has_bundled_prices = _importable("genai_prices")
    lines = commands(PAGE)
    assert lines and all(line.startswith("shekel ") for line in lines)
    for line in lines:
        args = shlex.split(line)[1:]
        done = subprocess.run(
            [sys.executable, "-m", "shekel", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_clean(done.stdout, done.stderr)
        if args[0] == "run" and "--store" not in args:
            assert done.returncode == 3, done.stderr  # as the page shows: the budget stops the program
            report = json.loads((tmp_path / "spend.json").read_text())
            assert report["stopped_by_budget"] and report["calls"] > 0
        elif args[0] == "prices" and not has_bundled_prices:
            assert done.returncode in (0, 1), done.stderr
        else:
            assert done.returncode == 0, (line, done.stderr)
    plot = tmp_path / "spend.png"
    assert plot.read_bytes()[:8] == PNG
    if os.environ.get("SHEKEL_UPDATE_DOCS_IMAGES"):
        IMAGE.parent.mkdir(exist_ok=True)
        shutil.copyfile(plot, IMAGE)
    assert IMAGE.read_bytes()[:8] == PNG, (
        "docs/images/cli-report.png: run this test with SHEKEL_UPDATE_DOCS_IMAGES=1"
    )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
