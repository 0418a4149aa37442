"""``shekel.prices()``: the price a call would be charged at, and where that price comes from."""

from __future__ import annotations

from ._context import current_budget
from ._money import exact_money
from ._pricing import AUTO, Price, resolve
from ._pricing_files import env_pricing


@exact_money
def prices(model: str, provider: str | None = AUTO) -> Price | None:
    """The price shekel would charge a call to ``model`` right here, or None when it knows none.

    Inside a budget the budget's precedence applies (its prices, its ancestors', pricing files, then the
    bundled data); outside one, ``SHEKEL_PRICING`` and then the bundled data. ``provider`` is an Inference
    Provider name (``"together"``), ``"auto"`` (the default: the highest price among the providers known for
    the model, which is what an auto-routed call reserves), or None for a self-hosted endpoint.
    ``Price.source`` says where the price came from, with the bundled data's version and date.

    >>> import shekel
    >>> shekel.prices("meta-llama/Llama-3.1-8B-Instruct", provider="cerebras").input_per_1m
    Decimal('0.1')
    """
    budget = current_budget()
    if budget is not None:
        return budget.price_for(model, provider)
    env = env_pricing()
    return resolve([] if env is None else [env], model, provider)
