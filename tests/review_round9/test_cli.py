"""Review round 9: ``shekel run`` keeps its budget in a store (a private SQLite file without --store), so
the shared-budget defects reach every ``shekel run``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

pytest.importorskip("huggingface_hub")

AGENT = """
import sys
from huggingface_hub import InferenceClient
client = InferenceClient(base_url=sys.argv[1])
client.chat_completion([{"role": "user", "content": "hi there"}], model="m")  # no max_tokens
"""


def test_shekel_run_caps_a_program_that_sets_no_max_tokens(tmp_path: Path) -> None:
    """``shekel run --budget 0.10 agent.py``, whose one call sets no max_tokens: the request goes out with
    none, and the run reports 'spent $2.005000 of $0.100000 (2005.0%)', exit 0. The same program under
    ``with budget(max_usd=0.10)`` in-process is sent max_tokens=26 and spends $0.057."""
    (tmp_path / "agent.py").write_text(AGENT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHEKEL_") and k != "HF_TOKEN"}
    with FakeInferenceServer(reply="word " * 3000) as server:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "shekel",
                "run",
                "--budget",
                "0.10",
                "--price-per-1k",
                "1,2",
                "agent.py",
                server.url,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        (request,) = server.requests
    assert request.body.get("max_tokens") is not None, done.stderr  # observed: None
    assert "2005.0%" not in done.stderr and (request.output_tokens or 0) <= 45
