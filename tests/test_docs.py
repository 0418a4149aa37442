"""Every Python example in the core docs runs as written, against the local server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

pytest.importorskip("huggingface_hub")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SEED = ROOT.parent / "shared" / "seed" / "huggingface-integration.md"
CORE_PAGES = [
    "huggingface.md",
    "quickstart.md",
    "budgets.md",
    "streaming.md",
    "hard-caps.md",
    "threads.md",
]
# The seed page's client talks to Hugging Face; in tests the same client talks to the local server.
SEED_CLIENT = 'InferenceClient(token="your-hf-token")'


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", CORE_PAGES)
def test_page_examples_run(
    page: str, server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no Python example"
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in blocks:
        code = block.replace(SEED_CLIENT, f'InferenceClient(base_url="{server.url}", token="your-hf-token")')
        exec(compile(code, f"docs/{page}", "exec"), namespace)
    assert "Traceback" not in capsys.readouterr().err


def test_seed_examples_make_real_requests(
    server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, object] = {}
    for block in python_blocks(DOCS / "huggingface.md"):
        exec(block.replace(SEED_CLIENT, f'InferenceClient(base_url="{server.url}")'), namespace)
    out = capsys.readouterr().out
    # basic + streaming + nested + 100 enforcement calls, each one real request to the local server
    assert server.request_count == 103
    costs = [float(v) for v in re.findall(r"Cost: \$(\d+\.\d+)", out)]
    assert len(costs) == 2 and all(c > 0 for c in costs)  # streaming is priced too, unlike the old page
    step1, total = (float(v) for v in re.findall(r"(?:Step 1|Total): +\$(\d+\.\d+)", out))
    assert step1 == total > 0


@pytest.mark.skipif(not SEED.exists(), reason="the seed page lives in ../shared/seed")
def test_docs_keep_the_seed_examples_as_written() -> None:
    seed_lines = {line.strip() for line in SEED.read_text().splitlines()}
    for block in python_blocks(DOCS / "huggingface.md"):
        for line in block.splitlines():
            if line.strip():
                assert line.strip() in seed_lines, f"not in the seed page: {line!r}"
