"""shekel: hard spending limits for LLM calls.

>>> from shekel import budget
>>> with budget(max_usd=1.00, price_per_1k_tokens={"input": 0.001, "output": 0.002}) as b:
...     ...  # every Hugging Face inference call in here is counted, priced and capped

Importing shekel imports no framework: it patches the client libraries already loaded, and the others as they
are imported (an import hook), so the import order does not matter.
"""

from __future__ import annotations

from . import _namesake  # noqa: F401  (first: an unrelated PyPI 'shekel' mixed in, or installed alongside)
from ._budget import Budget, budget
from ._context import carry, current_budget
from ._patching import install, uninstall, watch
from ._price_lookup import prices
from ._pricing import Price
from ._records import CallRecord, ModelTotals
from ._usage import Usage
from .errors import (
    BudgetConfigError,
    BudgetExceededError,
    ForkedBudgetError,
    PricingError,
    RequestError,
    ShekelError,
    StoreError,
)

__version__ = "2.0.0.dev0"

watch()  # patch the client libraries already loaded; the others as they are imported
del watch

__all__ = [
    "Budget",
    "BudgetConfigError",
    "BudgetExceededError",
    "CallRecord",
    "ForkedBudgetError",
    "ModelTotals",
    "Price",
    "PricingError",
    "RequestError",
    "ShekelError",
    "StoreError",
    "Usage",
    "__version__",
    "budget",
    "carry",
    "current_budget",
    "install",
    "prices",
    "uninstall",
]
