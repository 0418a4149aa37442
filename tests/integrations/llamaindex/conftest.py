"""Fixtures for the LlamaIndex integration: real LlamaIndex objects talking to the local server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("llama_index.llms.huggingface_api")

from llama_index.core import Settings
from llama_index.core.callbacks import CallbackManager
from llama_index.llms.huggingface_api import HuggingFaceInferenceAPI

from shekel.integrations import llamaindex
from shekel.testing import FakeInferenceServer

#: Output tokens every test LLM asks for (``num_output``), so each answer is exactly this many words.
NUM_OUTPUT = 5
INPUT_PER_TOKEN = Decimal("0.001")  # the shared PRICES fixture: $1 per 1k input tokens
OUTPUT_PER_TOKEN = Decimal("0.002")  # and $2 per 1k output tokens


def cost(input_tokens: int, output_tokens: int) -> Decimal:
    """What a call costs at the test prices."""
    return input_tokens * INPUT_PER_TOKEN + output_tokens * OUTPUT_PER_TOKEN


@pytest.fixture(autouse=True)
def clean_llamaindex() -> Iterator[None]:
    """Restore LlamaIndex's global Settings and take shekel's LlamaIndex patch off after each test."""
    saved = (Settings._callback_manager, Settings._llm, Settings._embed_model)
    yield
    Settings._callback_manager, Settings._llm, Settings._embed_model = saved
    llamaindex.uninstall()


@pytest.fixture
async def make_llm(server: FakeInferenceServer) -> AsyncIterator[Callable[..., HuggingFaceInferenceAPI]]:
    """A fresh HuggingFaceInferenceAPI pointed at the local server.

    LlamaIndex closes its async client after a stream only: the others are closed after the test, in the
    test's event loop.
    """
    made: list[HuggingFaceInferenceAPI] = []

    def make(*handlers: Any, **kwargs: Any) -> HuggingFaceInferenceAPI:
        kwargs.setdefault("num_output", NUM_OUTPUT)
        llm = HuggingFaceInferenceAPI(
            model=server.url, callback_manager=CallbackManager(list(handlers)), **kwargs
        )
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm._async_client.close()
