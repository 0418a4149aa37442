"""Every example in docs/pricing.md runs as written, against the local server, with the files it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

pytest.importorskip("huggingface_hub")
pytest.importorskip("genai_prices")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "pricing.md"
# The page's clients talk to Hugging Face or to a local TGI; in tests they talk to the local server.
ROUTED_CLIENT = 'InferenceClient(provider="together", token="your-hf-token")'
SELF_HOSTED = "http://localhost:8080"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_pricing_page_examples_run(
    server: FakeInferenceServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (toml,) = blocks("toml")
    (json_file,) = blocks("json")
    Path("prices.toml").write_text(toml)
    Path("prices.json").write_text(json_file)
    python = blocks("python")
    assert len(python) >= 6
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in python:
        code = block.replace(
            ROUTED_CLIENT, f'InferenceClient(base_url="{server.url}/v1", provider="together")'
        ).replace(SELF_HOSTED, server.url)
        exec(compile(code, str(PAGE), "exec"), namespace)
    out = capsys.readouterr().out
    assert "together\nbundled genai-prices" in out  # the first call was priced for its provider
    assert "highest of" in out and "budget 'inner'\nbudget 'outer'" in out
    assert "from pricing file 'prices.toml'" in out
    assert "$0.003 per call, from budget 'budget'\n0.003\n" in out
    assert 'models."my-org/my-finetune".input must not be negative' in out
    assert "no price for model 'my-org/unlisted-model'" in out and "1 UNPRICED" in out
    assert "\ntokens\n" in out  # the free-tier loop was stopped by max_total_tokens


def test_the_json_example_holds_the_same_prices_as_the_toml_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shekel

    monkeypatch.chdir(tmp_path)
    Path("prices.toml").write_text(blocks("toml")[0])
    Path("prices.json").write_text(blocks("json")[0])
    for model, provider in [("my-org/my-finetune", None), ("meta-llama/Llama-3.3-70B-Instruct", "together")]:
        with shekel.budget(pricing="prices.toml"):
            from_toml = shekel.prices(model, provider=provider)
        with shekel.budget(pricing="prices.json"):
            from_json = shekel.prices(model, provider=provider)
        assert from_toml is not None and from_json is not None
        assert from_toml.cost(1000, 1000, 10) == from_json.cost(1000, 1000, 10)
