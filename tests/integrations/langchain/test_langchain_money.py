"""Money stays exact inside the LangChain handler whatever the application's decimal context.

An application may lower ``decimal.getcontext().prec`` or trap ``Inexact`` for its own work; shekel's
arithmetic (the per-token stream check, the handler's own charges, its refusals) must neither fail nor round.
Each test runs the same calls under Python's default context and under a hostile one, and compares.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from decimal import Decimal
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")

from langchain_huggingface import ChatHuggingFace

import shekel
from shekel import Budget, BudgetExceededError, budget
from shekel.integrations.langchain import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer

#: Prices whose per-token amounts need more than four digits: any rounding shows.
PRICES = {"input": "0.1234567", "output": "0.7654321"}


def long_stream(words: int) -> str:
    """A chat stream of ``words`` one-token chunks, whatever ``max_tokens`` asked for, without usage."""
    events = [
        '{"object":"chat.completion.chunk","id":"","created":0,"model":"m","choices":[{"index":0,'
        f'"delta":{{"role":"assistant","content":"w{i} "}},"finish_reason":null}}]}}'
        for i in range(words)
    ]
    return "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"


@contextmanager
def hostile_decimal_context() -> Iterator[None]:
    """The application's own decimal context: four digits, and every rounding an error."""
    with decimal.localcontext() as context:
        context.prec = 4
        context.traps[decimal.Inexact] = True
        context.traps[decimal.Rounded] = True
        yield


def run_both(run: Callable[[Budget], Any], server: FakeInferenceServer) -> tuple[Budget, Budget]:
    """``run`` under the default context and under the hostile one, each with a fresh budget."""
    plain = budget(max_usd=1, price_per_1k_tokens=PRICES)
    run(plain)
    server.reset()
    with hostile_decimal_context():
        hostile = budget(max_usd=1, price_per_1k_tokens=PRICES)
        run(hostile)
    return plain, hostile


def assert_same_money(plain: Budget, hostile: Budget) -> None:
    assert hostile.calls == plain.calls > 0
    assert hostile.spent_exact == plain.spent_exact
    # (sorted: a batch's calls run in threads and settle in any order)
    assert sorted(r.cost for r in hostile.records) == sorted(r.cost for r in plain.records)
    assert plain.spent_exact == sum(
        (
            Decimal(PRICES["input"]) / 1000 * r.input_tokens
            + Decimal(PRICES["output"]) / 1000 * r.output_tokens
            for r in plain.records
        ),
        Decimal(0),
    )


@contextmanager
def without_the_adapter(removed: bool) -> Iterator[None]:
    """The Hugging Face adapter uninstalled (when ``removed``): only the handler counts. Creating a bound
    handler installs it again, so this goes inside, around the calls."""
    if not removed:
        yield
        return
    shekel.uninstall()
    try:
        yield
    finally:
        shekel.install()


@pytest.mark.parametrize("adapter", [True, False], ids=["adapter", "handler-alone"])
def test_streaming_is_exact_in_any_decimal_context(
    adapter: bool, chat: ChatHuggingFace, server: FakeInferenceServer
) -> None:
    def run(b: Budget) -> None:
        config: Any = {"callbacks": [BudgetCallbackHandler(budget=b)]}
        estimated: AbstractContextManager[Any] = (
            nullcontext() if adapter else pytest.warns(UserWarning, match="charges its calls by estimate")
        )  # the handler alone sees no usage in the stream
        with without_the_adapter(not adapter), estimated:
            chunks = list(chat.stream("hello there", config=config))
        assert "".join(str(c.content) for c in chunks) == "Transformers are neural networks that"

    plain, hostile = run_both(run, server)
    assert_same_money(plain, hostile)
    assert {r.source for r in hostile.records} == (
        {"huggingface_hub.chat_completion"} if adapter else {"langchain"}
    )


@pytest.mark.parametrize("adapter", [True, False], ids=["adapter", "handler-alone"])
def test_invoke_and_batch_are_exact_in_any_decimal_context(
    adapter: bool, chat: ChatHuggingFace, server: FakeInferenceServer
) -> None:
    def run(b: Budget) -> None:
        config: Any = {"callbacks": [BudgetCallbackHandler(budget=b)]}
        with without_the_adapter(not adapter):
            chat.invoke("hello there", config=config)
            chat.batch(["hello there", "a b c"], config=config)

    plain, hostile = run_both(run, server)
    assert_same_money(plain, hostile)
    assert {r.source for r in hostile.records} == (
        {"huggingface_hub.chat_completion"} if adapter else {"langchain"}
    )


def test_a_stream_cut_off_at_the_cap_in_any_decimal_context(
    chat: ChatHuggingFace, server: FakeInferenceServer
) -> None:
    # A server that ignores max_tokens=5 and streams 60 tokens: the per-token check stops it at the cap.
    def run(b: Budget) -> None:
        server.respond_next(long_stream(60), content_type="text/event-stream")
        with pytest.raises(BudgetExceededError) as stopped:
            for _ in chat.stream("hello there", config={"callbacks": [BudgetCallbackHandler(budget=b)]}):
                pass
        assert "cannot pay" in str(stopped.value)

    limit = "0.03456789"
    plain = budget(max_usd=limit, price_per_1k_tokens=PRICES)
    run(plain)
    with hostile_decimal_context():
        hostile = budget(max_usd=limit, price_per_1k_tokens=PRICES)
        run(hostile)
    assert hostile.calls == plain.calls == 1
    assert hostile.spent_exact == plain.spent_exact <= Decimal(limit)
    assert hostile.reserved == 0
