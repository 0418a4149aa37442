"""Keeping secrets out of what shekel shows: model ids that are endpoint URLs may carry a token.

A model id reaches records, reports, errors and warnings. When it is a URL, its ``user:password@`` part, its
query string, its fragment and any ``;param`` of its path may carry a token; the request itself still goes
to the full URL.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

_PATH_PARAMS = re.compile(r";[^/]*")


def redact_model(model: str | None) -> str | None:
    """``model`` without the parts of a URL that may carry a token (unchanged when it is not a URL)."""
    if model is None or not ("@" in model or "?" in model or "#" in model or ";" in model):
        return model
    return _redact(model)


@lru_cache(maxsize=256)
def _redact(model: str) -> str:
    try:
        parts = urlsplit(model)
    except ValueError:  # not parseable as a URL: show nothing of it that could be a secret
        return "<model id hidden: not a valid URL>"
    if not parts.scheme:
        return model
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        try:
            port = parts.port
        except ValueError:
            port = None
        netloc = host if port is None else f"{host}:{port}"
    path = _PATH_PARAMS.sub("", parts.path)
    return urlunsplit(parts._replace(netloc=netloc, path=path, query="", fragment=""))
