"""Review round 7: defects found attacking the Hugging Face task counting and the import-order patching."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shekel import budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")


def test_an_sdk_loaded_through_another_import_hook_after_the_first_budget_is_still_counted() -> None:
    """An import hook placed ahead of shekel's in sys.meta_path (tracing / type-checking hooks insert at 0)
    loads huggingface_hub after the first budget: shekel's finder never sees the module, and entering the
    next budget does not patch it either (``ensure_installed`` returns at once once ``_installed`` is set).

    Expected: two text_to_image calls under max_llm_calls=1 -> b.calls == 1, 1 request, the 2nd refused.
    Observed: b.calls == 0, 2 requests sent, the 2nd NOT refused (every call uncounted, cap not enforced).
    """
    with FakeInferenceServer() as server:
        script = textwrap.dedent(
            f"""
            import importlib.machinery, sys
            from shekel import BudgetExceededError, budget
            with budget():
                pass
            class Hook:
                def find_spec(self, name, path, target=None):
                    if name.startswith("huggingface_hub"):
                        return importlib.machinery.PathFinder.find_spec(name, path, target)
                    return None
            sys.meta_path.insert(0, Hook())
            from huggingface_hub import InferenceClient
            client = InferenceClient(model={server.task_url("text-to-image")!r}, token="hf_test")
            with budget(max_llm_calls=1, price_per_1k_tokens={{"per_call": 0.25}}) as b:
                client.text_to_image("a")
                try:
                    client.text_to_image("a")
                    refused = False
                except BudgetExceededError:
                    refused = True
            print(b.calls, refused)
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1", "True"]
        assert server.request_count == 1


def test_a_summary_longer_than_the_unsent_default_is_charged_its_length() -> None:
    """The 1,024 output tokens reserved for a summary without ``max_new_tokens`` are NOT sent to the server
    (docs/huggingface.md), so the server may answer more; yet the estimate is clamped to 1,024 as if the
    server had been limited.

    Server answers a 14,999-character summary (ceil(14999/4) = 3,750 estimated output tokens).
    Expected: record.output_tokens == 3750 (output cost 3750 * $0.002 = $7.50).
    Observed: record.output_tokens == 1024 (output charged $2.048): $5.45 of output not counted.
    """
    server = FakeInferenceServer(reply="word " * 3000, default_max_tokens=3000).start()
    try:
        client = huggingface_hub.InferenceClient(model=server.task_url("summarization"), token="hf_test")
        with budget(max_usd=100, price_per_1k_tokens={"input": 1, "output": 2}) as b:
            answer = client.summarization("a long text to cut")
    finally:
        server.stop()
    assert record_tokens(b) == -(-len(answer.summary_text) // 4) == 3750


def record_tokens(b: object) -> int:
    return b.records[-1].output_tokens  # type: ignore[attr-defined,no-any-return]
