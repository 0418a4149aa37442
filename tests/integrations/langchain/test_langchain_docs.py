"""The examples of docs/integrations/langchain.md run as written, against the local server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")

from shekel.testing import FakeInferenceServer

PAGE = Path(__file__).resolve().parents[3] / "docs" / "integrations" / "langchain.md"
# The page's model lives on Hugging Face; in tests the same endpoint class talks to the local server.
MODEL = 'repo_id="meta-llama/Llama-3.1-8B-Instruct"'


def test_langchain_page_examples_run(server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 2
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in blocks:
        assert MODEL in block or "chain.invoke" in block
        code = block.replace(MODEL, f'endpoint_url="{server.url}"')
        exec(compile(code, str(PAGE), "exec"), namespace)
    out = capsys.readouterr().out

    first = namespace["b"]
    assert re.search(rf"^{first.calls} calls, \$\d+\.\d{{4}} spent$", out, flags=re.M)  # type: ignore[attr-defined]
    assert first.calls == 4 and first.spent > 0  # type: ignore[attr-defined]

    answered, refused = (int(n) for n in re.search(r"answered (\d+), refused (\d+)", out).groups())  # type: ignore[union-attr]
    assert answered > 0 and refused > 0 and answered + refused == 120
    assert server.request_count == 4 + answered, "a refused run sends no request"
    tenant = namespace["tenant"]
    assert tenant.spent <= 0.5 and tenant.calls == answered  # type: ignore[attr-defined]
    assert "cannot pay for the next call" in out
