"""Import order does not matter: huggingface_hub imported before or after shekel, before or after the first
budget, and methods taken before the first budget, are all counted. Each order runs in a fresh interpreter.

Every script makes two calls under ``max_llm_calls=1``: the second must be refused before it is sent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shekel.testing import FakeInferenceServer

pytest.importorskip("huggingface_hub")

CHECK = """
def twice(call):
    from shekel import BudgetExceededError, budget
    with budget(max_llm_calls=1, on_unknown_price="zero") as b:
        call()
        try:
            call()
        except BudgetExceededError:
            pass
        else:
            raise SystemExit("the second call was not refused")
    assert b.calls == 1, b.calls
    print("ok")

MESSAGES = [{"role": "user", "content": "hi"}]
"""

SCRIPTS = {
    "sdk-before-shekel": """
        from huggingface_hub import InferenceClient
        import shekel
        client = InferenceClient(base_url=URL)
        create = client.chat_completion
        twice(lambda: create(MESSAGES, max_tokens=5))
    """,
    "sdk-after-shekel-before-first-budget": """
        import shekel
        from huggingface_hub import InferenceClient
        client = InferenceClient(base_url=URL)
        create = client.chat.completions.create
        twice(lambda: create(messages=MESSAGES, max_tokens=5))
    """,
    "sdk-after-first-budget": """
        import shekel
        with shekel.budget():
            pass
        from huggingface_hub import InferenceClient
        client = InferenceClient(base_url=URL)
        twice(lambda: client.chat_completion(MESSAGES, max_tokens=5))
    """,
    "bound-method-captured-before-first-budget": """
        import shekel
        from huggingface_hub import InferenceClient
        client = InferenceClient(model=URL + "/tasks/text-classification")
        classify = client.text_classification
        twice(lambda: classify("what a day"))
    """,
    "async-client-imported-after-shekel": """
        import asyncio
        import shekel
        from huggingface_hub import AsyncInferenceClient

        async def main():
            async with AsyncInferenceClient(base_url=URL) as client:
                create = client.chat_completion
                from shekel import BudgetExceededError, budget
                async with budget(max_llm_calls=1, on_unknown_price="zero") as b:
                    await create(MESSAGES, max_tokens=5)
                    try:
                        await create(MESSAGES, max_tokens=5)
                    except BudgetExceededError:
                        pass
                    else:
                        raise SystemExit("the second call was not refused")
                assert b.calls == 1
                print("ok")

        asyncio.run(main())
    """,
    # The method as it was before shekel was imported: the request it sends is counted (as a call).
    "unbound-method-held-before-shekel": """
        from huggingface_hub import InferenceClient
        chat_completion = InferenceClient.chat_completion
        import shekel
        client = InferenceClient(base_url=URL)
        twice(lambda: chat_completion(client, MESSAGES, max_tokens=5))
    """,
}


@pytest.mark.parametrize("order", SCRIPTS)
def test_every_import_order_is_counted(server: FakeInferenceServer, order: str) -> None:
    script = f"URL = {server.url!r}\n{CHECK}\n{textwrap.dedent(SCRIPTS[order])}"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert server.request_count == 1


HOOK = """
import importlib
import sys
import shekel
from shekel import _patching

finder = _patching._FINDER
assert finder in sys.meta_path
assert not any(
    m.split(".")[0] in ("huggingface_hub", "openai", "anthropic", "httpx", "numpy") for m in sys.modules
), "import shekel imported an SDK"
import huggingface_hub  # lazy: the clients' modules are not loaded yet, so nothing to patch
assert "huggingface_hub.inference._client" in _patching._watched
from huggingface_hub import InferenceClient
assert InferenceClient.__dict__["feature_extraction"].__shekel_original__
assert "huggingface_hub.inference._client" not in _patching._watched
from huggingface_hub import AsyncInferenceClient
assert AsyncInferenceClient.__dict__["text_to_image"].__shekel_original__
for adapter in _patching.ADAPTERS:  # every library watched, loaded: the hook is gone
    for name in adapter.watched:
        try:
            importlib.import_module(name)
        except ImportError:  # a library not installed here: it stays watched
            pass
assert (finder in sys.meta_path) == bool(_patching._watched)
shekel.uninstall()
assert finder not in sys.meta_path
assert not hasattr(InferenceClient.__dict__["feature_extraction"], "__shekel_original__")
shekel.install()
assert InferenceClient.__dict__["feature_extraction"].__shekel_original__
print("ok")
"""

UNINSTALLED_BEFORE_IMPORT = """
import sys
import shekel
shekel.uninstall()
assert shekel._patching._FINDER not in sys.meta_path
from huggingface_hub import InferenceClient
assert not hasattr(InferenceClient.__dict__["chat_completion"], "__shekel_original__")
print("ok")
"""


@pytest.mark.parametrize("script", [HOOK, UNINSTALLED_BEFORE_IMPORT], ids=["hook", "uninstalled"])
def test_the_import_hook_installs_as_modules_load_and_leaves(script: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
