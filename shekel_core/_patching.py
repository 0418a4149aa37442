"""Installing the adapters: as soon as their client library is loaded, whatever the import order.

``import shekel`` patches the libraries already loaded and watches for the others: an import hook (a
``sys.meta_path`` finder) wraps the ``exec_module`` of each watched module's loader, so that the adapter is
installed the moment that module has run, before any code can take a method from it. The hook imports
nothing itself and leaves ``sys.meta_path`` once every watched module is loaded. Entering a budget installs
what is loaded and re-arms the hook (``ensure_installed``, after an ``uninstall()``), importing nothing;
``install()`` imports and patches every importable library, on demand.

Each adapter module (``shekel.adapters.<library>``) has ``install()`` (import the library if it can, patch
it, return whether it did), ``uninstall()`` (put back the exact originals) and, optionally,
``install_loaded()`` (patch what is loaded, importing nothing: what the hook calls; without it the hook calls
``install()``). Supporting a new library is one line in ``ADAPTERS``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


class Adapter:
    """An adapter module and the modules of its library whose loading installs it."""

    __slots__ = ("module", "watched")

    def __init__(self, module: str, watched: tuple[str, ...]) -> None:
        self.module = module
        self.watched = watched


#: Every adapter, one line each.
ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        "shekel.adapters.huggingface_hub",
        ("huggingface_hub.inference._client", "huggingface_hub.inference._generated._async_client"),
    ),
    Adapter("shekel.adapters.openai", ("openai._base_client",)),
    Adapter("shekel.adapters.anthropic", ("anthropic._base_client",)),
)

_lock = threading.RLock()  # re-entered: an adapter's install may import a module the hook watches
_installed = False
#: Watched module name -> its adapter module, for modules not loaded yet.
_watched: dict[str, str] = {}


def install() -> None:
    """Patch every supported client library that is importable (``ADAPTERS``: huggingface_hub, openai,
    anthropic). Idempotent.

    ``import shekel`` and entering a budget do this already; call it yourself to patch eagerly, at start-up.
    """
    global _installed
    with _lock:
        for adapter in ADAPTERS:
            importlib.import_module(adapter.module).install()
        _installed = True
        _arm(ADAPTERS)
    _pick_up_langchain()


def _pick_up_langchain() -> None:
    if "langchain_core" in sys.modules and "langchain_huggingface" in sys.modules:
        # LangChain is in use: importing the integration registers its configure hook, so that LangChain
        # runs inside a budget pick up shekel's callback handler by themselves.
        try:
            importlib.import_module("shekel.integrations.langchain")
        except ImportError as exc:  # a LangChain it cannot work with: budgets still count through the adapter
            warnings.warn(f"shekel: LangChain runs will not pick up shekel's handler: {exc}", stacklevel=2)


def uninstall() -> None:
    """Restore the exact original methods of every patched library, and stop watching imports. Idempotent.

    A budget entered afterwards installs the patches again.
    """
    global _installed
    with _lock:
        _disarm()
        for adapter in ADAPTERS:
            module = sys.modules.get(adapter.module)
            if module is not None:  # an adapter never loaded has nothing installed
                module.uninstall()
        _installed = False


def ensure_installed() -> None:
    """At the first budget entered (and after ``uninstall()``): patch the libraries loaded now and watch for
    the others, importing none (an SDK the program never imports costs it nothing, and pulls in nothing)."""
    global _installed
    if _installed:
        if _watched:
            _pick_up_missed()
        return
    watch()
    with _lock:
        _installed = True
    _pick_up_langchain()


def watch() -> None:
    """At ``import shekel``: patch the libraries already loaded, and watch for the others' import."""
    with _lock:
        for adapter in ADAPTERS:
            if any(name in sys.modules for name in adapter.watched):
                _install_loaded(adapter.module)
        _arm(ADAPTERS)


# ------------------------------------------------------------------------------------------ the hook
def _pick_up_missed() -> None:
    """Watched modules loaded without the hook seeing them (another import hook ahead of it in
    ``sys.meta_path`` loaded them): install their adapters now, at the budget being entered."""
    for name in [name for name in _watched if name in sys.modules]:
        _loaded(name, sys.modules[name])


def _install_loaded(adapter_module: str) -> None:
    module = importlib.import_module(adapter_module)
    install_loaded: Callable[[], Any] = getattr(module, "install_loaded", module.install)
    install_loaded()


def _arm(adapters: Sequence[Adapter]) -> None:
    for adapter in adapters:
        for name in adapter.watched:
            if name not in sys.modules:
                _watched[name] = adapter.module
    if _watched and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _disarm() -> None:
    _watched.clear()
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def _loaded(name: str, module: ModuleType) -> None:
    """A watched module has just run: install its adapter."""
    with _lock:
        adapter_module = _watched.pop(name, None)
        if not _watched and _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        if adapter_module is None:  # uninstalled meanwhile
            return
        try:
            _install_loaded(adapter_module)
        except Exception as exc:
            # The import itself goes on; the next budget entered installs again, and fails there (closed).
            global _installed
            _installed = False
            warnings.warn(
                f"shekel could not patch {name} as it was imported ({exc!r}); the next budget entered "
                "tries again.",
                RuntimeWarning,
                stacklevel=2,
            )


class _Finder:
    """A ``sys.meta_path`` finder that finds nothing itself: it finds watched modules with the finders after
    it, and wraps their loader's ``exec_module`` to call ``_loaded`` once the module has run."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _watched:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        loader: Any = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec
        # On the loader instance (one per module file), taken off again once it has run.
        had_own = "exec_module" in getattr(loader, "__dict__", {})

        def exec_and_install(module: ModuleType) -> None:
            try:
                exec_module(module)
            finally:
                if not had_own:
                    with contextlib.suppress(AttributeError):
                        del loader.exec_module
                else:
                    loader.exec_module = exec_module
            if getattr(module, "__name__", None) == fullname:
                _loaded(fullname, module)

        # A loader whose attributes are fixed is left alone: the next budget entered installs.
        with contextlib.suppress(AttributeError, TypeError):
            loader.exec_module = exec_and_install
        return spec


_FINDER = _Finder()
