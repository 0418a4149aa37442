"""Fixtures shared by the LangChain tests: real langchain-huggingface models pointed at the local server."""

from __future__ import annotations

from typing import Any

import pytest

from shekel.testing import FakeInferenceServer

#: Output tokens every model here asks for (``max_new_tokens``); the local server answers that many words.
WORDS = 5


@pytest.fixture
def llm(server: FakeInferenceServer) -> Any:
    """A ``HuggingFaceEndpoint`` on the local server (imported here so that collection needs no LangChain)."""
    from langchain_huggingface import HuggingFaceEndpoint

    return HuggingFaceEndpoint(endpoint_url=server.url, max_new_tokens=WORDS)


@pytest.fixture
def chat(llm: Any) -> Any:
    """A ``ChatHuggingFace`` over :func:`llm`."""
    from langchain_huggingface import ChatHuggingFace

    return ChatHuggingFace(llm=llm)
