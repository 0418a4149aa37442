"""Replacing methods of a client library, exactly and reversibly.

Each adapter keeps one :class:`Patches`: it installs a wrapper once per method (a second install is a
no-op), and puts back the very original object on uninstall, but only where the wrapper it installed is
still the one in place: a wrapper another library put on top of ours (even one that copied our attributes
with ``functools.wraps``) is left alone, and ours stays under it, recorded, so that it is neither installed
twice nor forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Patches:
    """The methods one adapter replaced, and the wrappers it put there."""

    def __init__(self) -> None:
        self._installed: dict[tuple[type, str], tuple[Any, Any]] = {}

    def install(self, cls: type, name: str, wrap: Callable[[Any], Any]) -> None:
        """Replace ``cls.name`` by ``wrap(original)``, unless this adapter did already."""
        key = (cls, name)
        if key in self._installed:
            return
        original = cls.__dict__[name]
        wrapper = wrap(original)
        self._installed[key] = (original, wrapper)
        setattr(cls, name, wrapper)

    def uninstall(self) -> None:
        """Put back each original where our own wrapper is still the one in place."""
        for key, (original, wrapper) in list(self._installed.items()):
            cls, name = key
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
                del self._installed[key]

    def wrapper(self, cls: type, name: str) -> Any:
        """The wrapper installed for ``cls.name``, or None."""
        entry = self._installed.get((cls, name))
        return None if entry is None else entry[1]

    def __bool__(self) -> bool:
        return bool(self._installed)
