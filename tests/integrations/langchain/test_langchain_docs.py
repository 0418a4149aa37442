"""The examples of docs/integrations/langchain.md run as written, against the local server."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")
pytest.importorskip("langgraph")

from shekel.testing import FakeInferenceServer

PAGE = Path(__file__).resolve().parents[3] / "docs" / "integrations" / "langchain.md"
# The page's model lives on Hugging Face; in tests the same endpoint class talks to the local server.
MODEL = 'repo_id="meta-llama/Llama-3.1-8B-Instruct"'


def test_langchain_page_examples_run(server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 5
    namespace: dict[str, object] = {"__name__": "docs_example"}
    requests = []
    for block in blocks:
        assert MODEL in block or "chain.invoke" in block
        code = block.replace(MODEL, f'endpoint_url="{server.url}"')
        with warnings.catch_warnings():  # create_react_agent: deprecated by LangGraph 1.0
            warnings.simplefilter("ignore", DeprecationWarning)
            exec(compile(code, str(PAGE), "exec"), namespace)
        requests.append(server.request_count)
    out = capsys.readouterr().out

    first = namespace["b"]
    assert re.search(rf"^{first.calls} calls, \$\d+\.\d{{4}} spent$", out, flags=re.M)  # type: ignore[attr-defined]
    assert first.calls == 4 and first.spent > 0  # type: ignore[attr-defined]

    answered, refused = (int(n) for n in re.search(r"answered (\d+), refused (\d+)", out).groups())  # type: ignore[union-attr]
    assert answered > 0 and refused > 0 and answered + refused == 120
    assert requests[1] == 4 + answered, "a refused run sends no request"
    tenant = namespace["tenant"]
    assert tenant.spent <= 0.5 and tenant.calls == answered  # type: ignore[attr-defined]
    assert "cannot pay for the next call" in out

    # On the model: the constructor and with_config, one call each.
    team = namespace["team"]
    assert team.calls == requests[2] - requests[1] == 2  # type: ignore[attr-defined]
    assert re.search(r"^team: 2 calls, \$0\.\d{4}$", out, flags=re.M)

    # The graph: stopped at the cap, every request charged; then one async streamed call.
    user = namespace["user"]
    assert "graph stopped: budget 'user-7' cannot pay for the next call" in out
    assert user.calls > 0 and user.spent <= 0.25  # type: ignore[attr-defined]
    assert re.search(r"^async: 1 call, \$0\.\d{4}$", out, flags=re.M)
    assert requests[3] - requests[2] == user.calls + 1  # type: ignore[attr-defined]

    # The agent: stopped at the cap, every request charged, nothing past the cap.
    support = namespace["support"]
    assert "agent stopped: budget 'support' cannot pay for the next call" in out
    assert 0 < support.calls == requests[4] - requests[3] and support.spent <= 0.25  # type: ignore[attr-defined]
