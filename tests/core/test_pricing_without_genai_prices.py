"""Without genai-prices the bundled Hugging Face prices are missing: an unpriced call says why, and the fix.

genai-prices is hidden from a child interpreter by a meta-path finder that refuses it, as if it were not
installed (on Python 3.10 it is not: it needs 3.11). shekel itself is not touched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shekel._bundled_prices import _missing, unavailable_reason

pytest.importorskip("huggingface_hub")

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
CHILD = f"""
import sys

class RefuseGenaiPrices:
    def find_spec(self, name, path=None, target=None):
        if name == "genai_prices" or name.startswith("genai_prices."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, RefuseGenaiPrices())
import warnings
import shekel
from huggingface_hub import InferenceClient
from shekel import PricingError, budget
from shekel.testing import FakeInferenceServer

warnings.simplefilter("always")
with FakeInferenceServer() as server:
    client = InferenceClient(base_url=server.url + "/v1", provider="together")
    messages = [{{"role": "user", "content": "hi"}}]
    with warnings.catch_warnings(record=True) as caught, budget(max_usd=1) as b:
        client.chat_completion(messages, model={MODEL!r}, max_tokens=4)
    print("WARNING:", *(str(w.message) for w in caught))
    print("UNPRICED:", b.unpriced_calls, shekel.prices({MODEL!r}, provider="together"))
    try:
        with budget(max_usd=1, on_unknown_price="raise"):
            client.chat_completion(messages, model={MODEL!r}, max_tokens=4)
    except PricingError as exc:
        print("ERROR:", exc)
assert "genai_prices" not in sys.modules
"""


def _run_without_genai_prices(tmp_path: Path) -> dict[str, str]:
    app = tmp_path / "app.py"  # an application's file, as the warning blames the caller's line
    app.write_text(CHILD)
    done = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(line.split(": ", 1) for line in done.stdout.splitlines())


def test_an_unpriced_call_says_genai_prices_is_missing_and_how_to_install_it(tmp_path: Path) -> None:
    out = _run_without_genai_prices(tmp_path)
    assert out["UNPRICED"] == "1 None"
    for text in (out["WARNING"], out["ERROR"]):
        assert f"no price for model {MODEL!r} on provider 'together'" in text
        if sys.version_info >= (3, 11):
            assert "genai-prices, which cannot be imported here (No module named 'genai_prices')" in text
            assert 'pip install "shekel[huggingface]"' in text
        else:  # pragma: no cover - Python 3.10
            assert "genai-prices needs Python 3.11 or newer" in text


def test_on_python_3_10_the_reason_is_the_python_version() -> None:
    reason = _missing("No module named 'genai_prices'", (3, 10))
    assert "genai-prices needs Python 3.11 or newer" in reason and "this is Python 3.10" in reason
    assert "pip install" not in reason and "price_per_1k_tokens" in reason


def test_with_genai_prices_installed_there_is_nothing_to_say() -> None:
    pytest.importorskip("genai_prices")
    assert unavailable_reason() is None
