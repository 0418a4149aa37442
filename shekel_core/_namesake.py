"""The other ``shekel``: an unrelated project publishes a package of the same name on PyPI (0.2 to 1.2.0), also
imported as ``shekel``, with a ``budget(max_usd=...)`` of its own. This module, imported first by
``shekel/__init__.py``, looks for its files where they would break or shadow this package, and says so.

What happens, case by case:

- Both distributions are named ``shekel``, so pip replaces one with the other. If the other one replaced this
  one, none of this code is left to run: ``import shekel`` is the other project. The README says how to tell.
- The other one in a directory *earlier* on ``sys.path`` (the user site, ``PYTHONPATH``): it is imported
  instead of this one, and again none of this code runs.
- The other one in a directory *later* on ``sys.path``: this one is imported, and the other waits for an
  interpreter where the order differs. Seen here: a ``RuntimeWarning`` names both and how to remove it.
- Both projects' files in one ``shekel/`` directory (one installed over the other without uninstalling it,
  ``pip install --ignore-installed`` or ``--target`` for instance; the two share ``__init__.py``,
  ``_budget.py``, ``_context.py`` and ``_pricing.py``): which code runs is unknown. Seen here when this
  ``__init__.py`` is the one that runs: ``ImportError``, before any module the two share is imported.
- The other one's metadata found first (a leftover ``shekel-1.x.dist-info``): ``shekel._versions`` reads this
  project's own distribution, whichever comes first.

It costs one directory listing and one ``stat`` per ``sys.path`` entry, and imports nothing.
"""

from __future__ import annotations

import os
import sys
import warnings

#: Files every release of the other project has (0.2.0 to 1.2.0) and this one never had.
THEIR_FILES = frozenset({"_decorator.py", "_patch.py", "exceptions.py", "prices.json"})
REPOSITORY = "https://github.com/shekel-dev/shekel"
_THIS = f"this shekel (hard spending limits for LLM calls, {REPOSITORY})"
_OTHER = "an unrelated project also called shekel (published on PyPI as 'shekel')"


def check(here: str, path: list[str]) -> None:
    """Refuse a package directory ``here`` mixed with the other project's files; warn when the other project
    is installed further down ``path`` (``sys.path``)."""
    try:
        theirs = sorted(THEIR_FILES.intersection(os.listdir(here)))
    except OSError:  # a zip import, say: nothing to list, and nothing to mix
        theirs = []
    if theirs:
        raise ImportError(
            f"shekel: {here} holds the files of two different projects: {_THIS}, and {_OTHER}, whose "
            f"{', '.join(theirs)} are there. One was installed over the other without removing it, so which "
            f"code would run is unknown. Fix: run `{sys.executable} -m pip uninstall shekel` until pip says "
            f"shekel is not installed, delete {here} if it is still there, then install the one you want; "
            f'this one from its checkout with `pip install ".[huggingface]"` (see {REPOSITORY}#install).'
        )
    for entry in path:
        other = os.path.join(entry or os.curdir, "shekel")
        if not os.path.isfile(os.path.join(other, "__init__.py")) or _same(other, here):
            continue
        try:
            found = THEIR_FILES.intersection(os.listdir(other))
        except OSError:
            continue
        if found:
            warnings.warn(_shadowed(here, other), RuntimeWarning, stacklevel=2)


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _shadowed(here: str, other: str) -> str:
    parent = os.path.dirname(os.path.abspath(other))
    try:
        records = sorted(
            n for n in os.listdir(parent) if n.startswith("shekel-") and n.endswith(".dist-info")
        )
    except OSError:
        records = []
    versions = [n[len("shekel-") : -len(".dist-info")] for n in records]
    also = "".join(f" and {os.path.join(parent, n)}" for n in records)
    return (
        f"shekel: {_OTHER}{' ' + ', '.join(versions) if versions else ''} is installed at {other}. This process "
        f"imported {_THIS} from {here}, which comes first on sys.path; wherever the order differs (another "
        "interpreter, PYTHONPATH, the user site) `import shekel` gives the other one. Remove it: delete "
        f"{other}{also}, or uninstall it with the pip of the environment it belongs to (`pip uninstall shekel` "
        "removes whichever shekel comes first on sys.path, which here is this one)."
    )


check(os.path.dirname(os.path.abspath(__file__)), sys.path)
