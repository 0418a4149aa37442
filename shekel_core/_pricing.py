"""Prices: parsing ``price_per_1k_tokens`` and resolving the price of a call along a budget chain.

Precedence, first match wins: the innermost budget's ``price_per_1k_tokens``, its ancestors', pricing files
(``budget(pricing=...)`` innermost first, then ``SHEKEL_PRICING``), then the bundled Hugging Face Inference
Providers data (genai-prices).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from ._money import MILLION, THOUSAND, ZERO, to_decimal
from .errors import BudgetConfigError

#: The provider of a call routed by Hugging Face (``provider="auto"`` or the bare router): not known
#: before the answer, so the call is reserved at the highest price among the providers known for the model.
AUTO = "auto"
#: Routing policies the router accepts in place of a provider name (``model:fastest``); they mean AUTO.
ROUTING_POLICIES = frozenset({AUTO, "fastest", "cheapest", "preferred"})

# The bounds of a price. Money arithmetic has at least MONEY_PRECISION (28) significant digits: Python's
# default context, which exact_money keeps (it swaps in 40 digits only for a narrower or trapping one). With
# every per-token price a whole number of 1e-12 USD below 1e8 USD, a call of fewer than 100 million tokens
# costs a whole number of 1e-12 USD below 1e16 USD: at most 16 + 12 = 28 digits, exact, and so are the sums of
# a capped ledger (caps are below 1e15). A settled call has at most 20 million tokens (10 million input and
# 10 million output, what _usage accepts as reported); a reservation adds the prompt estimate and max_tokens.
# A reservation so large that it rounds costs more than any cap and is refused. Finer prices are rounded inside
# a reservation, and tiny ones (1e-999999) overflow Decimal when shekel works out how many output tokens a
# budget can pay for.
#: The finest per-token price shekel keeps exact (USD).
PRICE_QUANTUM = Decimal("1e-12")
#: Per-token prices are below this (USD).
MAX_PRICE_PER_TOKEN = Decimal("1e8")

_PRICE_KEYS = frozenset({"input", "output"})
_OPTIONAL_KEYS = frozenset({"cached_input", "cache_write"})
#: A price for each call, whatever its tokens: what media tasks (text-to-image, speech...) are charged.
PER_CALL = "per_call"
_PRICE_FIX = (
    'Give prices in USD per 1,000 tokens, e.g. price_per_1k_tokens={"input": 0.001, "output": 0.002}, '
    'and USD per call for media tasks, e.g. {"black-forest-labs/FLUX.1-dev": {"per_call": 0.003}}.'
)
#: The largest price of one call (USD).
MAX_PER_CALL = Decimal("1e8")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token for input (prompt) and output (completion) tokens, and where the price came from.

    ``cached_input_per_token`` is the price of prompt tokens the provider served from its cache, when the
    price source has one; without it cached tokens are charged as ordinary input. ``cache_write_per_token``
    is the price of prompt tokens written to the cache (Anthropic's ``cache_creation_input_tokens``), when
    the source has one; without it they are charged as ordinary input. ``provider`` is the Inference Provider
    the price belongs to, when it is provider-specific. ``per_call`` is USD charged for each call on top of
    its tokens: the price of media tasks (an image, a transcript), which have no tokens to price; a media
    task whose price has no ``per_call`` counts as unpriced.
    """

    input_per_token: Decimal
    output_per_token: Decimal
    source: str
    cached_input_per_token: Decimal | None = None
    provider: str | None = None
    cache_write_per_token: Decimal | None = None
    per_call: Decimal | None = None

    @property
    def worst_input_per_token(self) -> Decimal:
        """The most one prompt token can cost: the input price, or the cache-write price when it is higher
        (a reservation holds this, since it cannot know which prompt tokens the provider will cache)."""
        write = self.cache_write_per_token
        return self.input_per_token if write is None or write <= self.input_per_token else write

    def worst_input_cost(self, prompt_tokens: int) -> Decimal:
        """The most a call's input can cost: the prompt at :attr:`worst_input_per_token`, plus the per-call
        price (what every budget holds for a call before its output)."""
        cost = self.worst_input_per_token * prompt_tokens
        return cost if self.per_call is None else cost + self.per_call

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        """The exact USD cost of a call (its ``per_call`` price included); ``cached_input_tokens`` (read from
        the provider's cache) and ``cache_write_tokens`` (written to it) are part of ``input_tokens``."""
        if cache_write_tokens and self.cache_write_per_token is not None:
            written = min(max(cache_write_tokens, 0), input_tokens)
            # The written tokens' extra over plain input, then the rest as a call without writes.
            return (self.cache_write_per_token - self.input_per_token) * written + self.cost(
                input_tokens, output_tokens, min(cached_input_tokens, input_tokens - written), 0
            )
        # One function for the usual call (settled on every call: no helper calls on its path).
        cached_price = self.cached_input_per_token
        # min/max only when there is something cached to charge apart (the usual call has nothing).
        cached = (
            0
            if cached_price is None or not cached_input_tokens
            else min(max(cached_input_tokens, 0), input_tokens)
        )
        if not cached or cached_price is None:
            tokens = self.input_per_token * input_tokens + self.output_per_token * output_tokens
        else:
            tokens = (
                self.input_per_token * (input_tokens - cached)
                + cached_price * cached
                + self.output_per_token * output_tokens
            )
        return tokens if self.per_call is None else self.per_call + tokens

    @property
    def input_per_1m(self) -> Decimal:
        """USD per million input tokens (the unit most price lists use)."""
        return self.input_per_token * MILLION

    @property
    def output_per_1m(self) -> Decimal:
        """USD per million output tokens."""
        return self.output_per_token * MILLION

    def __str__(self) -> str:
        cached = (
            ""
            if self.cached_input_per_token is None
            else f", ${_plain(self.cached_input_per_token * MILLION)} cached input"
        )
        if self.cache_write_per_token is not None:
            cached += f", ${_plain(self.cache_write_per_token * MILLION)} cache write"
        if self.per_call is not None:
            tokens = (
                ""
                if not (self.input_per_token or self.output_per_token or cached)
                else f" plus ${_plain(self.input_per_1m)} input, ${_plain(self.output_per_1m)} output{cached} "
                "per 1M tokens"
            )
            return f"${_plain(self.per_call)} per call{tokens}, from {self.source}"
        return (
            f"${_plain(self.input_per_1m)} input, ${_plain(self.output_per_1m)} output{cached} "
            f"per 1M tokens, from {self.source}"
        )


def _plain(amount: Decimal) -> str:
    # Display only: some published prices carry float noise (1.0399999999999998); the Price stays exact.
    return f"{amount.quantize(Decimal('0.000001')).normalize():f}"


def price_problem(amount: Decimal, per: Decimal) -> str | None:
    """What is wrong with a price of ``amount`` USD per ``per`` tokens (a power of ten), or None when it is
    within the bounds above. ``amount`` is finite and not negative."""
    ceiling = MAX_PRICE_PER_TOKEN * per
    unit = f"USD per {per:,} tokens"
    if amount >= ceiling:
        return (
            f"must be below 1e{ceiling.adjusted()} {unit} (so that shekel counts calls of up to 100 million "
            "tokens exactly)"
        )
    step = PRICE_QUANTUM * per
    if amount and _last_digit(amount) < step.adjusted():
        return (
            f"must be 0 or a whole number of {step.normalize():f} {unit} (at most {-step.adjusted()} decimal "
            "places: $1e-12 per token is the finest price shekel keeps exact; round it, or give 0 for free)"
        )
    return None


def _last_digit(amount: Decimal) -> int:
    """The exponent of the last non-zero digit of ``amount`` (non-zero): -3 for 1.500 or 0.001, 2 for 500."""
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return exponent + trailing


def highest(prices: Iterable[Price], source: str) -> Price | None:
    """A price at least as high as each of ``prices`` for any call: the worst case of an auto-routed call."""
    listed = list(prices)
    if not listed:
        return None
    if len(listed) == 1:
        return listed[0]
    per_call = [p.per_call for p in listed if p.per_call is not None]
    return Price(
        max(p.input_per_token for p in listed),
        max(p.output_per_token for p in listed),
        source,
        provider=AUTO,
        per_call=max(per_call) if per_call else None,
    )


def split_model(model: str | None) -> tuple[str | None, str | None]:
    """``"org/model:together"`` -> ``("org/model", "together")``: the router's provider suffix, if any."""
    if model is None or ":" not in model or model.startswith(("http://", "https://")):
        return model, None
    base, _, suffix = model.rpartition(":")
    if not base or not suffix or "/" in suffix:
        return model, None
    return base, suffix


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices from one place (a budget or a pricing file): one price for every model, or per model id.

    ``per_provider`` holds prices for a model (or ``"*"``) on one Inference Provider; they win over the
    model's general price for calls served by that provider.
    """

    flat: Price | None
    per_model: Mapping[str, Price]
    per_provider: Mapping[tuple[str, str], Price] = field(default_factory=dict)

    def lookup(self, model: str | None, provider: str | None = None) -> Price | None:
        """The price of a call to ``model`` served by ``provider`` (None: unknown, AUTO: any)."""
        if self.flat is not None:
            return self.flat
        keys: list[str] = []
        if model is not None:
            keys.append(model)
            base, _ = split_model(model)
            if base is not None and base != model:
                keys.append(base)
        keys.append("*")
        for key in keys:
            price = self._lookup_key(key, provider)
            if price is not None:
                return price
        return None

    def _lookup_key(self, key: str, provider: str | None) -> Price | None:
        if provider is not None and provider not in ROUTING_POLICIES:
            price = self.per_provider.get((key, provider))
            if price is not None:
                return price
        if key in self.per_model:
            return self.per_model[key]
        if provider in ROUTING_POLICIES:
            listed = [p for (model, _), p in self.per_provider.items() if model == key]
            return highest(listed, f"the highest of {len(listed)} providers' prices for {key!r}")
        return None


def _parse_one(value: object, *, where: str, source: str) -> Price:
    if not isinstance(value, Mapping):
        raise BudgetConfigError(
            f"{where} must be a mapping with 'input' and 'output' (or 'per_call'), got {value!r}. {_PRICE_FIX}"
        )
    unknown = sorted(str(k) for k in value if k not in _PRICE_KEYS | _OPTIONAL_KEYS | {PER_CALL})
    if unknown:
        raise BudgetConfigError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; the known keys are 'input', "
            f"'output', 'cached_input' and 'cache_write' (optional), and 'per_call' (USD per call). {_PRICE_FIX}"
        )
    missing = sorted(_PRICE_KEYS - set(value))
    # A per-call price alone is whole; tokens priced beside it need both their prices.
    if missing and (PER_CALL not in value or len(missing) < len(_PRICE_KEYS) or set(value) & _OPTIONAL_KEYS):
        raise BudgetConfigError(f"{where} is missing {', '.join(map(repr, missing))}. {_PRICE_FIX}")
    per_1k: dict[str, Decimal] = {}
    for key in ("input", "output", "cached_input", "cache_write"):
        if key not in value:
            continue
        amount = to_decimal(
            value[key], what=f"{where}[{key!r}]", fix=_PRICE_FIX, below=MAX_PRICE_PER_TOKEN * THOUSAND
        )
        if amount < 0:
            raise BudgetConfigError(
                f"{where}[{key!r}] must not be negative, got {value[key]!r}. {_PRICE_FIX}"
            )
        problem = price_problem(amount, THOUSAND)
        if problem is not None:
            raise BudgetConfigError(f"{where}[{key!r}] {problem}, got {value[key]!r}. {_PRICE_FIX}")
        per_1k[key] = amount
    per_call = None
    if PER_CALL in value:
        per_call = to_decimal(
            value[PER_CALL], what=f"{where}['per_call']", fix=_PRICE_FIX, below=MAX_PER_CALL
        )
        problem = per_call_problem(per_call)
        if problem is not None:
            raise BudgetConfigError(f"{where}['per_call'] {problem}, got {value[PER_CALL]!r}. {_PRICE_FIX}")
    cached, write = per_1k.get("cached_input"), per_1k.get("cache_write")
    return Price(
        per_1k.get("input", ZERO) / THOUSAND,
        per_1k.get("output", ZERO) / THOUSAND,
        source,
        None if cached is None else cached / THOUSAND,
        cache_write_per_token=None if write is None else write / THOUSAND,
        per_call=per_call,
    )


def per_call_problem(amount: Decimal) -> str | None:
    """What is wrong with a price of ``amount`` USD per call (finite), or None."""
    if amount < 0:
        return "must not be negative"
    if amount >= MAX_PER_CALL:
        return "must be below 1e8 USD per call"
    if amount and _last_digit(amount) < PRICE_QUANTUM.adjusted():
        return "must be 0 or a whole number of 1e-12 USD (at most 12 decimal places)"
    return None


def parse_price_table(value: object, *, budget_name: str) -> PriceTable:
    """Validate ``price_per_1k_tokens``: ``{"input": x, "output": y}`` or ``{model_id: {...}, "*": {...}}``."""
    source = f"budget {budget_name!r}"
    if not isinstance(value, Mapping) or not value:
        raise BudgetConfigError(
            f"price_per_1k_tokens must be a non-empty mapping, got {value!r}. {_PRICE_FIX} "
            'Per model: {"meta-llama/Llama-3.2-1B-Instruct": {"input": ..., "output": ...}, "*": {...}}.'
        )
    keys = set(value)
    if keys & (_PRICE_KEYS | {PER_CALL}):
        return PriceTable(flat=_parse_one(value, where="price_per_1k_tokens", source=source), per_model={})
    per_model: dict[str, Price] = {}
    for model, price in value.items():
        if not isinstance(model, str) or not model:
            raise BudgetConfigError(f"price_per_1k_tokens keys must be model ids (str), got {model!r}.")
        per_model[model] = _parse_one(price, where=f"price_per_1k_tokens[{model!r}]", source=source)
    return PriceTable(flat=None, per_model=per_model)


def resolve(tables: Iterable[PriceTable], model: str | None, provider: str | None) -> Price | None:
    """The price of a call: the first table that prices it, else the bundled data.

    ``provider`` is the Inference Provider (a name, AUTO, or None for a self-hosted or unknown endpoint,
    which the bundled data cannot price).
    """
    price = resolve_in_tables(tables, model, provider)
    return price if price is not None else resolve_bundled(model, provider)


def resolve_in_tables(tables: Iterable[PriceTable], model: str | None, provider: str | None) -> Price | None:
    """The first of ``tables`` that prices the call, without the bundled data (see :func:`resolve`).

    Tables never change once built, so the answer for a given list of tables can be cached.
    """
    _, suffix = split_model(model)
    if provider in ROUTING_POLICIES and suffix is not None:
        provider = suffix
    for table in tables:
        price = table.lookup(model, provider)
        if price is not None:
            return price
    return None


def resolve_bundled(model: str | None, provider: str | None) -> Price | None:
    """The bundled price of the call (see :func:`resolve`). Not cacheable: the data may be updated."""
    base, suffix = split_model(model)
    if provider in ROUTING_POLICIES and suffix is not None:
        provider = suffix
    if base is None or provider is None:
        return None
    from ._bundled_prices import bundled_price

    return bundled_price(base, provider)


def unknown_price_message(
    model: str | None, provider: str | None, budget_path: str, task: str | None = None
) -> str:
    """Why a call has no price, and how to give one. ``task``: a media task, priced per call only."""
    served = {None: "a self-hosted or unknown endpoint", AUTO: "provider 'auto'"}.get(
        provider, f"provider {provider!r}"
    )
    why = ""
    if provider == "hf-inference":
        why = (
            " hf-inference is billed by compute time, not per token, so no per-token price is bundled;"
            " give an estimate or cap it with max_llm_calls / max_total_tokens."
        )
    elif provider is not None:  # the bundled data was asked
        from ._bundled_prices import unavailable_reason

        missing = unavailable_reason()
        why = "" if missing is None else f" {missing}"
    name = model if model is not None else "*"
    if task is not None:
        return (
            f"no per-call price for {task} with model {model!r} on {served} in budget {budget_path!r}: "
            "media tasks are priced per call, not per token. Give one with "
            f'price_per_1k_tokens={{{name!r}: {{"per_call": ...}}}} (USD per call), a pricing file '
            "(per_call = ... in its models table), or on_unknown_price='zero' to count it as free."
        )
    return (
        f"no price for model {model!r} on {served} in budget {budget_path!r}.{why} Give one with "
        f'price_per_1k_tokens={{{name!r}: {{"input": ..., "output": ...}}}}, a pricing file '
        "(budget(pricing='prices.toml') or SHEKEL_PRICING), or on_unknown_price='zero' to count it as free."
    )
