"""Fixtures for the fourth review's reproductions: each test here failed on the main it reviewed, and
guards the fix since."""

from __future__ import annotations

import subprocess
import sys

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi"}]


def run_script(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str] | None:
    """Run ``code`` in a fresh interpreter; None when it did not finish within ``timeout`` (it is killed)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
