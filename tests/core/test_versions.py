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


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('huggingface_hub<2,>=1.0; extra == "huggingface"', {"<2", ">=1.0"}),
        ("Huggingface-Hub >= 1.0 , < 2 ; extra == 'huggingface'", {"<2", ">=1.0"}),
        ("huggingface.hub[cli]>=1.0; extra == 'all'", {">=1.0"}),
        ("huggingface_hub (>=1.0,<2); extra == 'huggingface'", {"<2", ">=1.0"}),  # the older form
        ("huggingface_hub @ https://example.invalid/hf.whl ; extra == 'x'", None),  # a URL is no range
        ("huggingface_hub; extra == 'huggingface'", None),
        ("not a requirement at all", None),
    ],
)
def test_requirements_are_parsed_as_requirements(line: str, expected: set[str] | None) -> None:
    found = _versions.range_in([line], "huggingface_hub")
    assert (found if found is None else set(found.split(","))) == expected


def test_the_floor_ci_tests_is_the_extras_floor() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    (hf_requirement,) = [r for r in extras["huggingface"] if r.lower().startswith("huggingface_hub")]
    assert f">={_versions.floor('huggingface_hub')}," in hf_requirement + ","
    assert _versions.floor("not-a-dependency") is None
