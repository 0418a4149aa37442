"""Supported framework versions.

The one place they are written is ``pyproject.toml``'s extras; at run time they are read back from the
installed package's metadata, so the extras and this check can never disagree. ``.ci/run`` reads the floors
it tests from here too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from functools import cache
from importlib import metadata

from ._namesake import REPOSITORY

#: How this project's metadata begins its summary (older installs have no Project-URL).
SUMMARY = "Hard spending limits"


@cache
def supported_range(distribution: str) -> str | None:
    """The version specifier shekel's extras give ``distribution`` (e.g. ``"<2,>=1.0"``), or None."""
    ours = our_distribution()
    return None if ours is None else range_in(ours.requires or [], distribution)


@cache
def our_distribution() -> metadata.Distribution | None:
    """This project's installed distribution: not the first one named shekel, which may be an unrelated
    project's (see ``shekel._namesake``)."""
    for found in metadata.distributions(name="shekel"):
        meta = found.metadata
        urls = meta.get_all("Project-URL") or []
        if any(REPOSITORY in url for url in urls) or (meta["Summary"] or "").startswith(SUMMARY):
            return found
    return None


def range_in(requirements: Iterable[str], distribution: str) -> str | None:
    """The specifier the first of ``requirements`` (``Requires-Dist`` lines) naming ``distribution`` gives."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    wanted = canonicalize_name(distribution)
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) == wanted and requirement.specifier:
            return str(requirement.specifier)
    return None


def floor(distribution: str) -> str | None:
    """The oldest version of ``distribution`` the extras allow (its ``>=``, ``~=`` or ``==`` bound), or None."""
    from packaging.specifiers import SpecifierSet

    specifier = supported_range(distribution)
    if specifier is None:
        return None
    bounds = [s.version for s in SpecifierSet(specifier) if s.operator in (">=", "~=", "==", "===")]
    return bounds[0] if len(bounds) == 1 else None


@cache
def check(distribution: str, extra: str) -> bool:
    """Warn once when the installed ``distribution`` is outside the range shekel supports. True if it fits."""
    from packaging.specifiers import SpecifierSet

    specifier = supported_range(distribution)
    try:
        installed = metadata.version(distribution)
    except metadata.PackageNotFoundError:
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
