"""What shekel reads of genai-prices beyond its public API, pinned down.

genai-prices' public API (``calc_price``) prices one call but cannot list which providers price a model nor
give per-token prices, so ``shekel._bundled_prices`` reads its data snapshot (the list is in that module's
docstring). These tests fail loudly when that layout changes: before a release of genai-prices that changes
it may be allowed by the extra's range. They also check that every price shekel reads equals what the public
``calc_price`` computes for the same model, provider and day.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

import shekel
from shekel import _bundled_prices, _versions
from shekel._money import MILLION
from shekel._pricing import price_problem

genai_prices = pytest.importorskip("genai_prices")
from genai_prices import data_snapshot  # noqa: E402

NOON_TODAY = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)


def hf_providers() -> list[Any]:
    return [p for p in data_snapshot.get_snapshot().providers if p.id.startswith("huggingface_")]


def hf_entries() -> Iterator[tuple[Any, Any]]:
    for provider in hf_providers():
        for model in provider.models:
            yield provider, model


def test_the_installed_genai_prices_is_in_the_range_the_extra_names() -> None:
    supported = _versions.supported_range("genai-prices")
    assert supported is not None
    assert SpecifierSet(supported).contains(genai_prices.__version__, prereleases=True)
    # The 0.2 series: its releases so far (0.2.0 to 0.2.3) change only their data.
    assert SpecifierSet(supported) == SpecifierSet(">=0.2.3,<0.3")


def test_the_snapshot_layout_shekel_reads() -> None:
    snapshot = data_snapshot.get_snapshot()
    assert isinstance(snapshot.providers, list)
    assert isinstance(snapshot.from_auto_update, bool)
    assert isinstance(snapshot.timestamp, datetime)
    providers = hf_providers()
    assert len(providers) >= 5, "genai-prices no longer lists Hugging Face Inference Providers"
    for provider in providers:
        assert isinstance(provider.id, str)
        assert callable(provider.find_model)
        assert provider.find_model("no-such-org/no-such-model") is None
    tiered = 0
    for _, model in hf_entries():
        assert isinstance(model.id, str)
        prices = model.get_prices(NOON_TODAY)
        assert isinstance(vars(prices), dict)
        for key in ("input_mtok", "output_mtok", "cache_read_mtok"):
            value = getattr(prices, key)  # an unset price reads None; a renamed one raises
            if value is not None and not isinstance(value, Decimal):
                tiered += 1
                assert isinstance(value.base, Decimal)
                assert all(isinstance(tier.price, Decimal) for tier in value.tiers)
    with pytest.raises(AttributeError):
        model.get_prices(NOON_TODAY).no_such_price_mtok  # noqa: B018


def test_every_bundled_price_is_what_calc_price_computes() -> None:
    """For each Hugging Face model and provider: the same model found, and the same cost."""
    compared = 0
    for provider, model in hf_entries():
        router_name = provider.id.removeprefix("huggingface_")
        price = shekel.prices(model.id, provider=router_name)
        prices = model.get_prices(NOON_TODAY)
        if prices.input_mtok is None and prices.output_mtok is None:
            assert price is None
            continue
        assert price is not None and f"model {model.id}" in price.source
        if any(not isinstance(v, (Decimal, type(None))) for v in vars(prices).values()):
            continue  # tiered: shekel charges the highest tier, calc_price the one the usage reaches
        usage = genai_prices.Usage(input_tokens=1234, output_tokens=567)
        public = genai_prices.calc_price(
            usage, model.id, provider_id=provider.id, genai_request_timestamp=NOON_TODAY
        )
        assert public.model.id == model.id and public.provider.id == provider.id
        # genai-prices' data carries float noise (1.0399999999999998 for $1.04), which shekel rounds away.
        assert price.cost(1234, 567) == Decimal(public.total_price).quantize(Decimal("1e-12")).normalize()
        compared += 1
    assert compared >= 100, f"only {compared} Hugging Face prices compared"


def test_the_providers_of_a_model_are_those_calc_price_finds_it_at() -> None:
    from shekel._bundled_prices import providers_for

    models = {model.id for _, model in hf_entries()}
    for model_id in sorted(models)[:40]:
        found = set()
        for provider in hf_providers():
            try:
                genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model_id, provider_id=provider.id)
            except LookupError:
                continue
            found.add(provider.id.removeprefix("huggingface_"))
        assert set(providers_for(model_id)) == found, model_id


def test_every_bundled_price_is_within_the_bounds_of_a_price() -> None:
    for _, model in hf_entries():
        for key, value in vars(model.get_prices(NOON_TODAY)).items():
            for amount in [value] if isinstance(value, Decimal) else [] if value is None else [value.base]:
                published = _bundled_prices._published(amount)
                assert price_problem(published, MILLION) is None, (model.id, key, amount)


def test_a_genai_prices_laid_out_otherwise_is_unpriced_and_the_warning_says_why() -> None:
    """A snapshot whose providers lack ``find_model`` (as a release that renamed it would have), installed with
    genai-prices' own ``set_custom_snapshot``: no AttributeError inside the call, and the reason is given."""

    renamed = SimpleNamespace(id="huggingface_together", models=[])  # no find_model
    snapshot = SimpleNamespace(providers=[renamed], from_auto_update=True, timestamp=NOON_TODAY)
    model = "meta-llama/Llama-3.3-70B-Instruct"
    data_snapshot.set_custom_snapshot(snapshot)
    try:
        assert shekel.prices(model, provider="together") is None
        with (
            pytest.raises(shekel.PricingError) as caught,
            shekel.budget(max_usd=1, on_unknown_price="raise") as b,
        ):
            b.reserve(model=model, provider="together", prompt_tokens=1, max_tokens=1)
        message = str(caught.value)
        assert (
            f"the installed genai-prices {genai_prices.__version__} is not laid out the way shekel" in message
        )
        assert "AttributeError" in message and "find_model" in message
        assert 'pip install "shekel[huggingface]"' in message
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert shekel.prices(model, provider="together") is not None
    assert _bundled_prices.unavailable_reason() is None
