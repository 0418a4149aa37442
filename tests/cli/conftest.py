"""Running the ``shekel`` command as a subprocess, as users do, against the local server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

#: Never in any output: the tests give the programs this token.
TOKEN = "hf_cli_test_secret_token_4f9a"
#: Variables a developer's shell may set that would change what the command does.
_CLEARED = ("SHEKEL_RUN", "SHEKEL_BUDGET_USD", "SHEKEL_PRICING", "SHEKEL_STORE", "HF_TOKEN")

#: A program that chats with the server at argv[1] until its budget stops it (or argv[2] calls are made).
CHAT = textwrap.dedent(
    f"""
    import sys
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=sys.argv[1], token="{TOKEN}")
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 10**6
    for _ in range(limit):
        client.chat_completion([{{"role": "user", "content": "hi there"}}], model="m", max_tokens=5)
    print("done", limit)
    """
)


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env.update(extra)
    return env


Shekel = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def shekel(tmp_path: Path) -> Shekel:
    """``shekel(*args, env=..., script=False)``: ``python -m shekel ARGS`` (or the console script) in tmp_path."""

    def run(
        *args: str, env: dict[str, str] | None = None, console_script: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        command = [console_script_path()] if console_script else [sys.executable, "-m", "shekel"]
        return subprocess.run(
            [*command, *args],
            cwd=tmp_path,
            env=environment() if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def console_script_path() -> str:
    found = Path(sys.executable).parent / ("shekel.exe" if os.name == "nt" else "shekel")
    if not found.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    return str(found)


@pytest.fixture
def chat_script(tmp_path: Path) -> Path:
    path = tmp_path / "chat.py"
    path.write_text(CHAT)
    return path


def assert_clean(*outputs: str) -> None:
    """No traceback and no token in what the command printed."""
    for text in outputs:
        assert TOKEN not in text
        assert "Traceback" not in text, text
