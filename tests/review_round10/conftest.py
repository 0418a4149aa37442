"""Fixtures for the tenth review's reproductions (issue 9, shared budgets): a real SQLite file and a real
redis-server (tests/_redis_server.py) for each test that takes ``store_url``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.db'}"
    url: str = request.getfixturevalue("redis_store_url")
    return url
