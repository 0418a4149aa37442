"""Shared fixtures: a real local HF-protocol server on 127.0.0.1 and a clean patch state per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shekel.testing import FakeInferenceServer

# Never let a developer's token reach a request or a report made by the tests.
# Nor a download of a tokenizer: tests count with tokenizers they build and lay out in a temporary cache.
for _name in (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACEHUB_API_TOKEN",
    "SHEKEL_PRICING",
    "SHEKEL_TOKENIZER_DOWNLOAD",
):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PRICES = {"input": 1.0, "output": 2.0}  # USD per 1k tokens: $0.001 per input token, $0.002 per output token


@pytest.fixture
def server() -> Iterator[FakeInferenceServer]:
    with FakeInferenceServer() as fake:
        yield fake


@pytest.fixture
def prices() -> dict[str, float]:
    return dict(PRICES)
