"""Which Hugging Face Inference Provider serves a call, as far as it can be told before the answer.

In order: the client's ``provider`` setting (a provider name), then the address: the router names the
provider in its path (``router.huggingface.co/<provider>/...``), while its bare OpenAI-compatible address
(``router.huggingface.co/v1``) and a plain model id route automatically. Any other address is a self-hosted
or dedicated endpoint: no provider, so no bundled price. The ``x-inference-provider`` answer header, when a
provider sends it, overrides all of this at settlement.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from ._pricing import AUTO, ROUTING_POLICIES

ROUTER_HOST = "router.huggingface.co"
#: The legacy serverless API, now the router's hf-inference provider.
_LEGACY_HOST = "api-inference.huggingface.co"
#: The answer header that names the provider which served a routed call.
PROVIDER_HEADER = "x-inference-provider"


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


@lru_cache(maxsize=256)  # a client calls the same address again and again; parsing it costs ~20 calls
def provider_from_url(url: str) -> str | None:
    """The provider a URL reaches: a router provider name, AUTO for the bare router, None otherwise."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == _LEGACY_HOST:
        return "hf-inference"
    if host != ROUTER_HOST:
        return None
    first = parts.path.strip("/").split("/", 1)[0]
    return AUTO if first in ("", "v1") else first


def call_provider(setting: object, address: str | None) -> str | None:
    """The provider of a call: ``setting`` is the client's ``provider``, ``address`` its URL, if any."""
    if isinstance(setting, str) and setting and setting not in ROUTING_POLICIES:
        return setting
    if address is not None:
        return provider_from_url(address)
    return AUTO
