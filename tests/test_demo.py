"""The README's first command runs the demo: it must work and show a budget stopping a loop."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("huggingface_hub")


def test_demo_runs_and_stops_a_loop() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shekel.demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Stopped at $" in result.stdout and "Cost: $" in result.stdout
    assert "process 4" in result.stdout and "zero overshoot across processes" in result.stdout
    assert "Traceback" not in result.stderr


def test_import_shekel_imports_no_framework() -> None:
    code = (
        "import sys, shekel, shekel.integrations, shekel.testing; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('huggingface_hub', 'langchain_core', 'langchain_huggingface', 'llama_index', 'genai_prices')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
