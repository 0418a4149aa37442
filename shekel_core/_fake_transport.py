"""httpx transports that send every request to the local test server, whatever host it names.

``https://router.huggingface.co/together/v1/chat/completions`` goes to
``http://127.0.0.1:PORT/together/v1/chat/completions``: the scheme, host and port change, the path, query,
headers (``Host`` included) and body do not. The SDK still sees the address it asked for on
``response.request``. Imported only when a test asks for a transport: the server itself needs no httpx.
The classes are made for the HTTP package a client is built on: httpx (OpenAI, huggingface_hub) or httpx2
(Anthropic 2.x).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import httpx


@cache
def transport_classes(package: str = "httpx") -> tuple[type[Any], type[Any]]:
    """The sync and async transports for ``package``: ``"httpx"``, or ``"httpx2"`` (the fork that the
    Anthropic SDK 2.x is built on, whose clients refuse httpx's transports)."""
    module = importlib.import_module(package)

    def local(request: Any, port: int) -> Any:
        url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
        return module.Request(
            request.method, url, headers=request.headers, stream=request.stream, extensions=request.extensions
        )

    class LocalTransport(module.BaseTransport):  # type: ignore[name-defined,misc]
        """Sends each request to ``127.0.0.1:port``, keeping its path."""

        def __init__(self, port: int) -> None:
            self.port = port
            self._inner = module.HTTPTransport()

        def handle_request(self, request: Any) -> Any:
            return self._inner.handle_request(local(request, self.port))

        def close(self) -> None:
            self._inner.close()

    class AsyncLocalTransport(module.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """The async twin of ``LocalTransport``."""

        def __init__(self, port: int) -> None:
            self.port = port
            self._inner = module.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            return await self._inner.handle_async_request(local(request, self.port))

        async def aclose(self) -> None:
            await self._inner.aclose()

    return LocalTransport, AsyncLocalTransport


def _hf_hooks() -> tuple[list[Callable[..., Any]], dict[str, list[Callable[..., Any]]]]:
    """huggingface_hub's own event hooks (offline mode, request ids), as its default clients have them."""
    try:
        from huggingface_hub.utils import _http
    except ImportError:  # pragma: no cover - checked by the caller
        return [], {}
    sync = [h for h in [getattr(_http, "hf_request_event_hook", None)] if h is not None]
    hooks: dict[str, list[Callable[..., Any]]] = {}
    request = getattr(_http, "async_hf_request_event_hook", None)
    response = getattr(_http, "async_hf_response_event_hook", None)
    if request is not None:
        hooks["request"] = [request]
    if response is not None:
        hooks["response"] = [response]
    return sync, hooks


@contextmanager
def route_huggingface_hub(port: int) -> Iterator[None]:
    """Install huggingface_hub client factories whose clients use the local transports; restore on exit."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import _http
    except ImportError as e:  # pragma: no cover - the tests skip without huggingface_hub
        raise ImportError(
            'routing huggingface_hub needs it installed: pip install "shekel[huggingface]"'
        ) from e
    sync_hooks, async_hooks = _hf_hooks()
    local, async_local = transport_classes("httpx")

    def factory() -> httpx.Client:
        return httpx.Client(
            transport=local(port),
            event_hooks={"request": list(sync_hooks)},
            follow_redirects=True,
            timeout=None,
        )

    def async_factory() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=async_local(port),
            event_hooks={k: list(v) for k, v in async_hooks.items()},
            follow_redirects=True,
            timeout=None,
        )

    # huggingface_hub offers setters but no getters: the factories in force are read from its module.
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    previous_async = getattr(_http, "_GLOBAL_ASYNC_CLIENT_FACTORY", _http.default_async_client_factory)
    huggingface_hub.set_client_factory(factory)  # closes the shared client, so the next call makes ours
    huggingface_hub.set_async_client_factory(async_factory)
    try:
        yield
    finally:
        # Put back only what is still ours: a test that installed its own factory inside keeps it.
        if getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) is factory:
            huggingface_hub.set_client_factory(previous)  # also closes the shared client made by ours
        if getattr(_http, "_GLOBAL_ASYNC_CLIENT_FACTORY", None) is async_factory:
            huggingface_hub.set_async_client_factory(previous_async)
