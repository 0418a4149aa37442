"""Warnings that point at the user's line, and that leave no trace in any ``__warningregistry__``.

``warnings.warn(stacklevel=n)`` needs to know how deep shekel is below the user's code, which differs by
client and framework; and it keeps one registry entry per distinct message at the line it blames, so a
long-running service warning about 20,000 budgets grows a registry by 20,000 entries. shekel decides itself
when to warn (once per budget and model), so it blames the first frame outside shekel and the libraries it
sits under, and passes a throwaway registry.
"""

from __future__ import annotations

import sys
import warnings
from types import FrameType

#: Top-level packages whose frames are never the user's line.
_LIBRARIES = frozenset(
    {
        "shekel",
        "huggingface_hub",
        "httpx",
        "httpcore",
        "openai",
        "anthropic",
        "langchain",
        "langchain_core",
        "langchain_huggingface",
        "langchain_openai",
        "langchain_anthropic",
        "langgraph",
        "llama_index",
        "llama_index_instrumentation",
        "workflows",
        "asyncio",
        "concurrent",
        "contextlib",
        "functools",
        "threading",
        "weakref",
    }
)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Emit ``message`` blamed on the innermost frame of the application's own code."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__")
        if not isinstance(module, str) or module.partition(".")[0] not in _LIBRARIES:
            break
        frame = frame.f_back
    if frame is None:  # only library frames (a callback run by an event loop, say)
        warnings.warn(message, category, stacklevel=2)
        return
    warnings.warn_explicit(
        message,
        category,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry={},
    )
