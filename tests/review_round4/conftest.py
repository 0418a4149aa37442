"""Fixtures for the fourth review's reproductions: each test here failed on the main it reviewed, and
guards the fix since."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test with a store runs against SQLite and against a real redis-server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.db'}"
    url: str = request.getfixturevalue("redis_store_url")
    return url


def run_script(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str] | None:
    """Run ``code`` in a fresh interpreter; None when it did not finish within ``timeout`` (it is killed)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
