"""After an async run with a bound handler and no budget around it, later calls in the same task work.

LangChain ends async runs in copies of the context, so the handler cannot take its budget frame back out of
the caller's context; it neutralises it (a frame with no budget), which must mean "no budget" everywhere.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")

from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint

from shekel import budget, current_budget
from shekel.integrations.langchain import BudgetCallbackHandler
from shekel.testing import FakeInferenceServer

PRICES = {"input": 1.0, "output": 2.0}


async def test_calls_after_an_async_bound_run_outside_any_budget(
    server: FakeInferenceServer, aclosing: Any
) -> None:
    endpoint = HuggingFaceEndpoint(endpoint_url=server.url, max_new_tokens=5)
    aclosing(endpoint.async_client)
    chat = ChatHuggingFace(llm=endpoint)
    tenant = budget(max_usd=5, price_per_1k_tokens=PRICES, name="tenant")
    await chat.ainvoke("hi", config={"callbacks": [BudgetCallbackHandler(budget=tenant)]})
    assert current_budget() is None
    await chat.ainvoke("again")  # crashed with AttributeError on the neutralised frame
    chat.invoke("again, sync")
    assert tenant.calls == 1 and server.request_count == 3
    async with budget(max_usd=1, price_per_1k_tokens=PRICES, name="request") as request:
        await chat.ainvoke("counted here")
    assert request.calls == 1 and request.parent is None and tenant.calls == 1
