"""Supported framework versions.

The one place they are written is ``pyproject.toml``'s extras; at run time they are read back from the
installed package's metadata, so the extras and this check can never disagree.
"""

from __future__ import annotations

import re
import warnings
from functools import cache
from importlib import metadata

_NAME = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def supported_range(distribution: str) -> str | None:
    """The version specifier shekel's extras give ``distribution`` (e.g. ``">=1.0,<2"``), or None."""
    try:
        requirements = metadata.requires("shekel") or []
    except metadata.PackageNotFoundError:
        return None
    wanted = _normalise(distribution)
    for requirement in requirements:
        match = _NAME.match(requirement)
        if match and _normalise(match.group(1)) == wanted and match.group(2).strip():
            return match.group(2).strip()
    return None


@cache
def check(distribution: str, extra: str) -> bool:
    """Warn once when the installed ``distribution`` is outside the range shekel supports. True if it fits."""
    specifier = supported_range(distribution)
    try:
        installed = metadata.version(distribution)
        from packaging.specifiers import SpecifierSet
    except (metadata.PackageNotFoundError, ImportError):
        return True
    if specifier is None or SpecifierSet(specifier).contains(installed, prereleases=True):
        return True
    warnings.warn(
        f"shekel supports {distribution}{specifier} but {installed} is installed; counting may be incomplete. "
        f'Install a supported version with: pip install "shekel[{extra}]"',
        RuntimeWarning,
        stacklevel=3,
    )
    return False
