"""The public API as users write it; `.ci/run` type-checks this file with mypy --strict (it is not a test)."""

from __future__ import annotations

from decimal import Decimal

import shekel
from shekel import Budget, BudgetExceededError, budget


def sync_use() -> float:
    with budget(max_usd=1.00, price_per_1k_tokens={"input": 0.001, "output": 0.001}) as b:
        pass
    spent: float = b.spent
    exact: Decimal = b.spent_exact
    remaining: float | None = b.remaining
    parent: Budget | None = b.parent
    text: str = b.summary()
    return spent + float(exact) + (remaining or 0.0) + (0 if parent is None else 1) + len(text)


async def async_use() -> int:
    async with budget(max_usd=1, name="task", max_llm_calls=3) as b:
        pass
    return b.calls


@budget(max_usd=0.5)
def decorated(x: int) -> str:
    return str(x)


@budget(max_usd=0.5, warn_at=0.8, on_warn=lambda spent, limit: None)
async def decorated_async(x: int) -> str:
    return str(x)


async def calls() -> str:
    a: str = decorated(1)
    b: str = await decorated_async(2)
    return a + b


def errors() -> None:
    try:
        sync_use()
    except BudgetExceededError as e:
        name: str = e.budget_name
        limit: float | None = e.limit
        print(name, limit, e.spent, e.model)


carried = shekel.carry(decorated)
assert carried(3) == "3"


def tokenizer_use() -> int:
    import shekel.tokenizers

    shekel.tokenizers.allow_download(False)
    loaded: dict[str, bool] = shekel.tokenizers.preload("meta-llama/Llama-3.1-8B-Instruct")
    exact: int | None = shekel.tokenizers.prompt_tokens(
        "meta-llama/Llama-3.1-8B-Instruct:together", [{"role": "user", "content": "hi"}]
    )
    text: int | None = shekel.tokenizers.text_tokens("gpt2", "hello")
    output: int | None = shekel.tokenizers.output_tokens("gpt2", ["hel", "lo"])
    info: shekel.tokenizers.TokenizerCacheInfo = shekel.tokenizers.cache_info()
    shekel.tokenizers.clear_cache()
    return len(loaded) + (exact or 0) + (text or 0) + (output or 0) + info.loads
