"""Fixtures for the fifth review's reproductions (shared budgets on Redis; OpenAI and Anthropic SDKs)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test with a store runs against SQLite and against a real redis-server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.db'}"
    url: str = request.getfixturevalue("redis_store_url")
    return url
