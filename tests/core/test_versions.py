"""Version floors come from one place: the extras in pyproject.toml, read back from the installed metadata."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shekel import _versions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_runtime_range_is_the_extras_range() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    (hf_requirement,) = [r for r in extras["huggingface"] if r.lower().startswith("huggingface_hub")]
    assert _versions.supported_range("huggingface_hub") is not None
    assert set(_versions.supported_range("huggingface-hub").split(",")) == set(
        hf_requirement[len("huggingface_hub") :].split(",")
    )


def test_the_installed_huggingface_hub_is_supported() -> None:
    pytest.importorskip("huggingface_hub")
    assert _versions.check("huggingface_hub", "huggingface")


def test_unknown_distributions_are_not_checked() -> None:
    assert _versions.supported_range("not-a-dependency") is None
    assert _versions.check("not-a-dependency", "all")
