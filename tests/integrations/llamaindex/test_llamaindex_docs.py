"""The examples of docs/integrations/llamaindex.md run as written, against the local server."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[3] / "docs" / "integrations" / "llamaindex.md"


def test_page_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 4
    # LlamaIndex runs its async steps on asyncio.get_event_loop(), which in the main thread makes a loop that
    # nobody closes: give it one that the test closes.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), {"__name__": "docs_example"})
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    out = capsys.readouterr().out
    assert re.search(r"spent \$0\.\d+ on 1 call\(s\)", out)
    assert "refused: budget 'budget' cannot pay for the next call" in out
    assert "team" in out
    assert re.search(r"^tenant: 3 calls, \$0\.\d+$", out, flags=re.M)
