"""Every Python example in the docs and the README runs as written, against the local server.

Each page's blocks run in order in one namespace: a block may continue the one before it. Pages whose
examples need a framework run in that framework's tests; ``test_every_page_with_python_is_run_somewhere``
checks that no page is left out.
"""

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
    "shared-budgets.md",
]
#: Pages whose examples run in other test modules (a framework, a subprocess, files of their own).
PAGES_TESTED_ELSEWHERE = {
    "pricing.md": "tests/core/test_pricing_docs.py",
    "integrations/langchain.md": "tests/integrations/langchain/test_langchain_docs.py",
    "integrations/llamaindex.md": "tests/integrations/llamaindex/test_llamaindex_docs.py",
    "openai.md": "tests/adapters/test_openai.py",
    "anthropic.md": "tests/adapters/test_anthropic.py",
    "opentelemetry.md": "tests/integrations/opentelemetry/test_opentelemetry_docs.py",
    "cli.md": "tests/cli/test_cli_docs.py",
}
#: The README's client talks to Hugging Face; in tests the same client talks to the local server.
README_CLIENT = 'InferenceClient(token="hf_...")'
# The seed page's client talks to Hugging Face; in tests the same client talks to the local server.
SEED_CLIENT = 'InferenceClient(token="your-hf-token")'


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", CORE_PAGES)
def test_page_examples_run(
    page: str,
    server: FakeInferenceServer,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files (a store's database): not in the checkout
    if page == "shared-budgets.md":  # its Redis examples use a real redis-server (skipped without, CI fails)
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_store_url"))
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no Python example"
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in blocks:
        code = block.replace(SEED_CLIENT, f'InferenceClient(base_url="{server.url}", token="your-hf-token")')
        exec(compile(code, f"docs/{page}", "exec"), namespace)
    assert "Traceback" not in capsys.readouterr().err


#: The first line of the huggingface.md blocks that the seed page does not have.
BEYOND_SEED = "# Not on the seed page"


def seed_blocks() -> list[str]:
    return [b for b in python_blocks(DOCS / "huggingface.md") if not b.startswith(BEYOND_SEED)]


def test_seed_examples_make_real_requests(
    server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, object] = {}
    for block in seed_blocks():
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
    for block in seed_blocks():
        for line in block.splitlines():
            if line.strip():
                assert line.strip() in seed_lines, f"not in the seed page: {line!r}"


def test_the_readme_example_runs(server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = python_blocks(ROOT / "README.md")
    assert README_CLIENT in block
    code = block.replace(README_CLIENT, f'InferenceClient(base_url="{server.url}", token="hf_...")')
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert server.request_count == 2 and "budget 'budget'" in capsys.readouterr().out


def test_every_page_with_python_is_run_somewhere() -> None:
    for page in sorted(DOCS.rglob("*.md")):
        name = page.relative_to(DOCS).as_posix()
        if not python_blocks(page):
            continue
        if name in CORE_PAGES:
            continue
        assert name in PAGES_TESTED_ELSEWHERE, f"docs/{name} has Python examples that no test runs"
        runner = ROOT / PAGES_TESTED_ELSEWHERE[name]
        assert runner.exists(), f"docs/{name} is said to run in {runner}, which does not exist"
        assert name.rsplit("/", 1)[-1] in runner.read_text(), f"{runner} does not read docs/{name}"
