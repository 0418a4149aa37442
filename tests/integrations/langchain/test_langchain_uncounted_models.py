"""A model whose client shekel does not patch and which reports no usage: said, not silently missed."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_huggingface")

from langchain_core.language_models.fake_chat_models import FakeListChatModel

from shekel import PricingError, budget
from shekel.integrations.langchain import BudgetCallbackHandler

PRICES = {"input": 1.0, "output": 1.0}


def test_a_model_without_usage_is_charged_by_estimate_with_one_warning_per_budget() -> None:
    model = FakeListChatModel(responses=["hello there"] * 6)
    config = {"callbacks": [BudgetCallbackHandler()]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
            for _ in range(3):
                model.invoke("hi", config=config)  # type: ignore[arg-type]
    assert b.calls == 3 and b.spent > 0
    assert all(record.estimated for record in b.records)
    said = [w for w in caught if "charges its calls by estimate" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]


def test_on_unknown_price_raise_refuses_a_model_no_adapter_prices_before_it_runs() -> None:
    model = FakeListChatModel(responses=["hello there"])
    with budget(max_usd=1, on_unknown_price="raise") as b:
        with pytest.raises(PricingError, match="on_unknown_price='raise'"):
            model.invoke("hi", config={"callbacks": [BudgetCallbackHandler()]})
    assert b.calls == 0 and b.reserved == 0
