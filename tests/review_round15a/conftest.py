from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._helpers import Restartable


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Restartable]:
    server = Restartable(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one "store is down" warning per budget
        yield
