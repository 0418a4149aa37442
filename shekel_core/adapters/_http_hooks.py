"""What happened to a counted call's request, read off the HTTP client that huggingface_hub uses.

Two event hooks on huggingface_hub's own HTTP client (the shared ``get_session()`` client for
``InferenceClient``, the per-client one for ``AsyncInferenceClient``) note, on the call that
``call_in_progress`` holds (the adapter sets it to the call it counts), that its request was handed to the
client, and the status and ``x-inference-provider`` header of the answer. Other requests pass through
untouched. The status decides what a failed call costs (``shekel._call.failure_outcome``); the header, at
which provider's price it is charged. When the hooks cannot be attached (a future huggingface_hub), the
type of the error decides, and calls are priced by the client's setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._call import call_in_progress
from .._hf_routing import PROVIDER_HEADER


def _on_request(request: Any) -> None:
    call = call_in_progress.get()
    if type(call) is not bool:  # a call counted here (not none, not one an integration counts itself)
        call.sent = True


def _on_response(response: Any) -> None:
    call = call_in_progress.get()
    if type(call) is bool:
        return
    call.status = response.status_code  # the last answer wins (a retry's, say)
    headers = response.headers
    if PROVIDER_HEADER in headers:  # checked first: ``get`` raises and catches a KeyError when it is absent
        value = headers.get(PROVIDER_HEADER)
        if value:
            call.served_by = value.strip().lower()


async def _on_request_async(request: Any) -> None:
    _on_request(request)


async def _on_response_async(response: Any) -> None:
    _on_response(response)


#: ``huggingface_hub.get_session``, looked up once: the package resolves it lazily on every access, which
#: costs some 30 function calls a time.
_get_session: Callable[[], Any] | None = None
#: The HTTP client the hooks were last attached to: the shared client rarely changes, so skip the lookups.
_last_attached: Any = None


def _attach(http_client: Any, on_request: Callable[[Any], Any], on_response: Callable[[Any], Any]) -> bool:
    global _last_attached
    if http_client is _last_attached:
        return True
    hooks = getattr(http_client, "event_hooks", None)
    if not isinstance(hooks, dict):
        return False
    if on_request not in hooks.setdefault("request", []):
        hooks["request"].append(on_request)
    if on_response not in hooks.setdefault("response", []):
        hooks["response"].append(on_response)
    _last_attached = http_client
    return True


def detach() -> None:
    """Take the hooks off huggingface_hub's shared HTTP client, if they were put there (``uninstall()``).

    Per-client async HTTP clients keep theirs until they close; without a call in flight they do nothing.
    """
    global _last_attached
    _last_attached = None
    if _get_session is None:
        return
    hooks = getattr(_get_session(), "event_hooks", None)
    if isinstance(hooks, dict):
        for kind, hook in (("request", _on_request), ("response", _on_response)):
            if hook in hooks.get(kind, []):
                hooks[kind].remove(hook)


def attach_sync() -> bool:
    """Put the hooks on the HTTP client ``InferenceClient`` calls will use, once; run inside a counted call.
    Returns whether they are there."""
    global _get_session
    if _get_session is None:
        from huggingface_hub import get_session

        _get_session = get_session
    http_client = _get_session()
    if http_client is _last_attached:  # _attach's own first check, without the call
        return True
    return _attach(http_client, _on_request, _on_response)


async def attach_async(client: Any) -> bool:
    """The async twin of :func:`attach_sync`; ``client`` is the ``AsyncInferenceClient``."""
    get_http_client = getattr(client, "_get_async_client", None)
    if get_http_client is None:
        return False
    return _attach(await get_http_client(), _on_request_async, _on_response_async)
