"""Installing the adapters: once per process, on the first budget entered, or explicitly."""

from __future__ import annotations

import importlib
import sys
import threading
import warnings

_lock = threading.Lock()
_installed = False


def install() -> None:
    """Patch every supported client library that is importable (huggingface_hub, openai, anthropic). Idempotent.

    Entering a budget does this on first use; call it yourself to patch eagerly, at start-up.
    """
    global _installed
    from .adapters import anthropic, huggingface_hub, openai

    with _lock:
        huggingface_hub.install()
        openai.install()
        anthropic.install()
        _installed = True
    if "langchain_core" in sys.modules and "langchain_huggingface" in sys.modules:
        # LangChain is in use: importing the integration registers its configure hook, so that LangChain
        # runs inside a budget pick up shekel's callback handler by themselves.
        try:
            importlib.import_module("shekel.integrations.langchain")
        except ImportError as exc:  # a LangChain it cannot work with: budgets still count through the adapter
            warnings.warn(f"shekel: LangChain runs will not pick up shekel's handler: {exc}", stacklevel=2)


def uninstall() -> None:
    """Restore the exact original methods of every patched library. Idempotent.

    A budget entered afterwards installs the patches again.
    """
    global _installed
    from .adapters import anthropic, huggingface_hub, openai

    with _lock:
        huggingface_hub.uninstall()
        openai.uninstall()
        anthropic.uninstall()
        _installed = False


def ensure_installed() -> None:
    if not _installed:
        install()
