"""Money stays exact inside the LlamaIndex handler whatever the application's decimal context.

Each path the handler takes (the query gate, the adapter's calls under a bound scope, the LLM events it counts
itself, streams read to the end or abandoned) runs under Python's default context and under one with four
digits that traps every rounding; the money must be the same, to the last digit.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.llms.huggingface_api import HuggingFaceInferenceAPI

from shekel import Budget, budget
from shekel.integrations.llamaindex import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer

from .test_llamaindex_other_llms import ServerLLM

#: Prices whose per-token amounts need more than four digits: any rounding shows.
PRICES = {"input": "0.1234567", "output": "0.7654321"}
MakeLLM = Callable[..., HuggingFaceInferenceAPI]


@contextmanager
def hostile_decimal_context() -> Iterator[None]:
    with decimal.localcontext() as context:
        context.prec = 4
        context.traps[decimal.Inexact] = True
        context.traps[decimal.Rounded] = True
        yield


def run_both(run: Callable[[Budget], Any], server: FakeInferenceServer) -> tuple[Budget, Budget]:
    plain = budget(max_usd="0.987654321", price_per_1k_tokens=PRICES)
    run(plain)
    server.reset()
    with hostile_decimal_context():
        hostile = budget(max_usd="0.987654321", price_per_1k_tokens=PRICES)
        run(hostile)
    assert hostile.calls == plain.calls > 0 and hostile.reserved == 0
    assert [r.cost for r in hostile.records] == [r.cost for r in plain.records]
    assert hostile.spent_exact == plain.spent_exact
    return plain, hostile


def engine(llm: Any, manager: CallbackManager | None = None, **kwargs: Any) -> Any:
    documents = [Document(text="A budget stops LLM spending at a hard cap.")]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    return RetrieverQueryEngine.from_args(index.as_retriever(), llm=llm, callback_manager=manager, **kwargs)


def test_queries_with_the_adapter(make_llm: MakeLLM, server: FakeInferenceServer) -> None:
    def run(b: Budget) -> None:
        Settings.callback_manager = CallbackManager([BudgetCallbackHandler()])
        with b:  # the query gate (Budget.check) and the adapter's calls
            engine(make_llm()).query("What does a budget do?")
        bound = CallbackManager([BudgetCallbackHandler(budget=b)])  # a bound scope, streaming
        "".join(engine(make_llm(), bound, streaming=True).query("And then?").response_gen)

    run_both(run, server)


def test_llm_events_counted_by_the_handler(server: FakeInferenceServer) -> None:
    def run(b: Budget) -> None:
        llm = ServerLLM(url=server.url, callback_manager=CallbackManager([BudgetCallbackHandler(budget=b)]))
        llm.complete("hello there")
        list(llm.stream_complete("hello there"))
        stream = llm.stream_complete("hello there")
        next(stream), next(stream)
        stream.close()  # abandoned: charged for what it delivered, an estimate

    plain, _ = run_both(run, server)
    assert [r.estimated for r in plain.records] == [False, False, True]
