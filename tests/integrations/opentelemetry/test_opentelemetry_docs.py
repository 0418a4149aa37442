"""The examples of docs/opentelemetry.md run as written, against the local server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("opentelemetry.sdk")

from shekel.integrations.opentelemetry import ShekelInstrumentor
from shekel.testing import FakeInferenceServer

PAGE = Path(__file__).resolve().parents[3] / "docs" / "opentelemetry.md"
# The page's client talks to Hugging Face; in tests the same client talks to the local server.
CLIENT = 'InferenceClient(token="hf_...")'


@pytest.fixture
def uninstrumented() -> Iterator[None]:
    ShekelInstrumentor().uninstrument()
    yield
    ShekelInstrumentor().uninstrument()


def test_opentelemetry_page_examples_run(
    uninstrumented: None, server: FakeInferenceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    text = PAGE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4 and CLIENT in blocks[1]
    namespace: dict[str, object] = {"__name__": "docs_example"}
    outputs = []
    for block in blocks:
        code = block.replace(CLIENT, f'InferenceClient(base_url="{server.url}", token="hf_...")')
        exec(compile(code, str(PAGE), "exec"), namespace)
        outputs.append(capsys.readouterr().out)
    assert server.request_count == 1  # the refused call was never sent
    assert not ShekelInstrumentor().is_instrumented_by_opentelemetry  # the last block turns it off

    # What the page shows is what the examples print.
    spans_shown, metrics_shown = re.findall(r"```text\n(.*?)```", text, flags=re.S)
    assert outputs[1] == spans_shown
    assert outputs[2] == metrics_shown
