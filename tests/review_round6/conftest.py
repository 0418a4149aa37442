"""Review round 6: the ``shekel`` command as a subprocess, and OpenTelemetry with the real SDK."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

_CLEARED = ("SHEKEL_RUN", "SHEKEL_BUDGET_USD", "SHEKEL_PRICING", "SHEKEL_STORE", "HF_TOKEN")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env.update(extra)
    return env


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def shekel(tmp_path: Path) -> Run:
    """``python -m shekel ARGS`` in tmp_path."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shekel", *args],
            cwd=tmp_path,
            env=environment() if env is None else env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


@pytest.fixture
def python(tmp_path: Path) -> Run:
    """``python ARGS`` in tmp_path (what ``shekel run`` should behave like)."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=environment() if env is None else env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run
