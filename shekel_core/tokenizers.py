"""Exact prompt counts from the model's own tokenizer: ``import shekel.tokenizers``.

With the extra installed (``pip install "shekel[tokenizers]"``) and a model's ``tokenizer.json`` in the
local Hugging Face cache, shekel counts a chat prompt exactly (its chat template included) before the call,
so reservations are close to the real cost instead of the byte heuristic's upper bound. Nothing is
downloaded unless you allow it::

    import shekel.tokenizers

    shekel.tokenizers.allow_download()  # or SHEKEL_TOKENIZER_DOWNLOAD=1 in the environment

Importing this module imports neither ``tokenizers`` nor jinja2: the first count of a model loads them.
"""

from __future__ import annotations

from ._tokenizer import (
    ABSENT_RETRY_SECONDS,
    DOWNLOAD_ENV,
    MAX_TOKENIZERS,
    TokenizerCacheInfo,
    allow_download,
    cache_info,
    clear_cache,
    output_tokens,
    preload,
    prompt_tokens,
    text_tokens,
)

__all__ = [
    "ABSENT_RETRY_SECONDS",
    "DOWNLOAD_ENV",
    "MAX_TOKENIZERS",
    "TokenizerCacheInfo",
    "allow_download",
    "cache_info",
    "clear_cache",
    "output_tokens",
    "preload",
    "prompt_tokens",
    "text_tokens",
]
