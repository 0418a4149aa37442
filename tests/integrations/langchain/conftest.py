"""Fixtures shared by the LangChain tests: real langchain-huggingface models pointed at the local server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shekel.testing import FakeInferenceServer

#: Output tokens every model here asks for (``max_new_tokens``); the local server answers that many words.
WORDS = 5


@pytest.fixture
async def llm(server: FakeInferenceServer) -> AsyncIterator[Any]:
    """A ``HuggingFaceEndpoint`` on the local server (imported here so that collection needs no LangChain).

    Its async client is closed after the test, in the test's event loop: LangChain never closes it.
    """
    from langchain_huggingface import HuggingFaceEndpoint

    endpoint = HuggingFaceEndpoint(endpoint_url=server.url, max_new_tokens=WORDS)
    yield endpoint
    await endpoint.async_client.close()


@pytest.fixture
def chat(llm: Any) -> Any:
    """A ``ChatHuggingFace`` over :func:`llm`."""
    from langchain_huggingface import ChatHuggingFace

    return ChatHuggingFace(llm=llm)
