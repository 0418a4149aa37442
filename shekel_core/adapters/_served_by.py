"""Reading the ``x-inference-provider`` answer header, which huggingface_hub does not hand back.

A response event hook on huggingface_hub's own HTTP client (the shared ``get_session()`` client for
``InferenceClient``, the per-client one for ``AsyncInferenceClient``) notes the header on the call that
``call_in_progress`` holds (the adapter sets it to the call it counts); other requests pass through
untouched. When the hook cannot be attached (a future huggingface_hub), calls are priced by the client's
setting instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._call import call_in_progress
from .._hf_routing import PROVIDER_HEADER


def _record(response: Any) -> None:
    call = call_in_progress.get()
    if type(call) is bool:  # no call counted here, or one an integration counts itself
        return
    headers = response.headers
    if PROVIDER_HEADER in headers:  # checked first: ``get`` raises and catches a KeyError when it is absent
        value = headers.get(PROVIDER_HEADER)
        if value:
            call.served_by = value.strip().lower()  # the last answer wins (a retry's, say)


async def _record_async(response: Any) -> None:
    _record(response)


#: ``huggingface_hub.get_session``, looked up once: the package resolves it lazily on every access, which
#: costs some 30 function calls a time.
_get_session: Callable[[], Any] | None = None
#: The HTTP client the hook was last attached to: the shared client rarely changes, so skip the lookups.
_last_attached: Any = None


def _attach(http_client: Any, hook: Callable[[Any], Any]) -> None:
    global _last_attached
    if http_client is _last_attached:
        return
    hooks = getattr(http_client, "event_hooks", None)
    if isinstance(hooks, dict):
        if hook not in hooks.setdefault("response", []):
            hooks["response"].append(hook)
        _last_attached = http_client


def detach() -> None:
    """Take the hook off huggingface_hub's shared HTTP client, if it was put there (``shekel.uninstall()``).

    Per-client async HTTP clients keep theirs until they close; without a call in flight it does nothing.
    """
    global _last_attached
    _last_attached = None
    if _get_session is None:
        return
    hooks = getattr(_get_session(), "event_hooks", None)
    if isinstance(hooks, dict) and _record in hooks.get("response", []):
        hooks["response"].remove(_record)


def attach_sync() -> None:
    """Put the hook on the HTTP client ``InferenceClient`` calls will use, once; run inside a counted call."""
    global _get_session
    if _get_session is None:
        from huggingface_hub import get_session

        _get_session = get_session
    http_client = _get_session()
    if http_client is not _last_attached:  # _attach's own first check, without the call
        _attach(http_client, _record)


async def attach_async(client: Any) -> None:
    """The async twin of :func:`attach_sync`; ``client`` is the ``AsyncInferenceClient``."""
    get_http_client = getattr(client, "_get_async_client", None)
    if get_http_client is not None:
        _attach(await get_http_client(), _record_async)
