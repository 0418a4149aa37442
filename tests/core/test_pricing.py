"""Where prices come from: the bundled genai-prices data, budgets, precedence, unknown prices, token caps."""

from __future__ import annotations

import subprocess
import sys
import warnings
from decimal import Decimal
from pathlib import Path

import pytest

import shekel
from shekel import BudgetConfigError, BudgetExceededError, Price, PricingError, budget
from shekel._budget import Budget, Reservation
from shekel._usage import Usage

genai_prices = pytest.importorskip("genai_prices")

LLAMA_70B = "meta-llama/Llama-3.3-70B-Instruct"  # served by several providers in the bundled data
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
MILLION = Decimal(1_000_000)


def genai_cost(model: str, provider: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The cost genai-prices itself computes, through its public API: the reference for shekel's."""
    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    result = genai_prices.calc_price(usage, model, provider_id=f"huggingface_{provider}")
    # Some of its prices carry float noise (1.0399999999999998 for a published $1.04) that shekel rounds
    # away; no real charge has 15 significant digits.
    return Decimal(result.total_price).quantize(Decimal("1e-15")).normalize()


def reserve(
    b: Budget,
    model: str | None = LLAMA_70B,
    provider: str | None = "together",
    prompt_tokens: int = 100,
    max_tokens: int | None = 50,
) -> Reservation:
    return b.reserve(model=model, provider=provider, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


# ------------------------------------------------------------------------------------------ bundled data
def test_import_shekel_loads_neither_genai_prices_nor_huggingface_hub() -> None:
    code = (
        "import sys, shekel; "
        "assert 'genai_prices' not in sys.modules and 'huggingface_hub' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_bundled_data_is_read_without_any_network() -> None:
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('no network in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import shekel\n"
        f"assert shekel.prices({LLAMA_70B!r}, provider='together') is not None\n"
        f"assert shekel.prices({LLAMA_70B!r}) is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_bundled_entry_without_any_price_is_unknown_not_free() -> None:
    from genai_prices import data_snapshot

    empty = [
        (provider.id.removeprefix("huggingface_"), model.id)
        for provider in data_snapshot.get_snapshot().providers
        if provider.id.startswith("huggingface_")
        for model in provider.models
        if not isinstance(model.prices, list)
        and model.prices.input_mtok is None
        and model.prices.output_mtok is None
    ]
    if not empty:
        pytest.skip("this genai-prices release lists no Hugging Face model without prices")
    provider, model = empty[0]
    assert shekel.prices(model, provider=provider) is None


def test_a_provider_price_matches_what_genai_prices_computes() -> None:
    price = shekel.prices(LLAMA_70B, provider="together")
    assert price is not None
    assert price.provider == "together"
    assert price.cost(1234, 567).normalize() == genai_cost(LLAMA_70B, "together", 1234, 567)
    assert price.input_per_1m == Decimal("1.04")  # as published, without the data's float noise
    assert f"genai-prices {genai_prices.__version__}" in price.source
    assert "huggingface_together" in price.source
    assert "prices as of 20" in price.source  # the date the price applies to


def test_providers_are_priced_apart() -> None:
    from shekel._bundled_prices import providers_for

    providers = providers_for(LLAMA_70B)
    assert {"together", "novita"} <= set(providers)
    costs = {p: genai_cost(LLAMA_70B, p, 1000, 1000) for p in providers}
    assert len(set(costs.values())) > 1, "the data should price providers differently"
    for provider, expected in costs.items():
        price = shekel.prices(LLAMA_70B, provider=provider)
        assert price is not None and price.cost(1000, 1000).normalize() == expected


def test_auto_is_the_highest_price_of_each_part_among_the_providers() -> None:
    from shekel._bundled_prices import providers_for

    prices = [shekel.prices(LLAMA_70B, provider=p) for p in providers_for(LLAMA_70B)]
    auto = shekel.prices(LLAMA_70B)  # provider="auto" is the default
    assert auto is not None and all(p is not None for p in prices)
    assert auto.input_per_token == max(p.input_per_token for p in prices if p)
    assert auto.output_per_token == max(p.output_per_token for p in prices if p)
    assert auto.provider == "auto"
    assert "highest of" in auto.source


def test_a_router_provider_suffix_on_the_model_picks_that_provider() -> None:
    assert shekel.prices(f"{LLAMA_70B}:novita") == shekel.prices(LLAMA_70B, provider="novita")
    assert shekel.prices(f"{LLAMA_70B}:fastest") == shekel.prices(LLAMA_70B)


def test_what_the_bundled_data_cannot_price() -> None:
    assert shekel.prices("no-such-org/no-such-model") is None
    assert shekel.prices(LLAMA_70B, provider="no-such-provider") is None
    assert shekel.prices(LLAMA_70B, provider="hf-inference") is None  # billed by compute time
    assert shekel.prices(LLAMA_70B, provider=None) is None  # a self-hosted endpoint


def test_model_ids_match_whatever_their_case() -> None:
    assert shekel.prices(LLAMA_70B.lower(), provider="together") == shekel.prices(
        LLAMA_70B, provider="together"
    )


def test_price_reads_per_million_and_prints_where_it_came_from() -> None:
    price = Price(Decimal("0.000001"), Decimal("0.000002"), "somewhere")
    assert price.input_per_1m == Decimal(1) and price.output_per_1m == Decimal(2)
    assert str(price) == "$1 input, $2 output per 1M tokens, from somewhere"


# ------------------------------------------------------------------------------------------ precedence
def test_budget_prices_beat_the_bundled_data_and_inner_beats_outer() -> None:
    with budget(price_per_1k_tokens={"input": 1, "output": 1}, name="outer") as outer:
        assert outer.price_for(LLAMA_70B, "together").source == "budget 'outer'"  # type: ignore[union-attr]
        with budget(price_per_1k_tokens={LLAMA_70B: {"input": 2, "output": 2}}, name="inner") as inner:
            assert inner.price_for(LLAMA_70B, "together").source == "budget 'inner'"  # type: ignore[union-attr]
            # A model the inner budget does not price takes the outer budget's price, not the bundled one.
            assert inner.price_for(LLAMA_8B, "together").source == "budget 'outer'"  # type: ignore[union-attr]
            assert shekel.prices(LLAMA_70B).source == "budget 'inner'"  # type: ignore[union-attr]


def test_without_budget_prices_the_bundled_data_applies_inside_a_budget() -> None:
    with budget(price_per_1k_tokens={"other/model": {"input": 1, "output": 1}}) as b:
        assert b.price_for(LLAMA_70B, "together") == shekel.prices(LLAMA_70B, provider="together")


def test_pricing_file_sits_between_budget_prices_and_the_bundled_data(tmp_path: Path) -> None:
    file = tmp_path / "prices.toml"
    file.write_text(f'unit = "per_1m_tokens"\n[models."{LLAMA_70B}"]\ninput = 5\noutput = 6\n')
    with budget(pricing=file) as outer:
        assert outer.price_for(LLAMA_70B, "together").input_per_1m == 5  # type: ignore[union-attr]
        assert outer.price_for(LLAMA_8B, "together") == shekel.prices(LLAMA_8B, provider="together")
        with budget(price_per_1k_tokens={"input": 1, "output": 1}) as inner:
            assert inner.price_for(LLAMA_70B, "together").source.startswith("budget")  # type: ignore[union-attr]


def test_the_environment_file_comes_after_pricing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(
        '{"unit": "per_1k_tokens", "models": {"*": {"input": 0.5, "output": 0.5}, '
        f'"{LLAMA_8B}": {{"input": 0.7, "output": 0.7}}}}}}'
    )
    given = tmp_path / "given.toml"
    given.write_text(f'unit = "per_1k_tokens"\n[models."{LLAMA_8B}"]\ninput = 0.9\noutput = 0.9\n')
    monkeypatch.setenv("SHEKEL_PRICING", str(env_file))
    assert shekel.prices("any/model").input_per_token == Decimal("0.0005")  # type: ignore[union-attr]
    with budget(pricing=given) as b:
        assert b.price_for(LLAMA_8B, "together").input_per_token == Decimal("0.0009")  # type: ignore[union-attr]
        assert b.price_for("any/model", "together").input_per_token == Decimal("0.0005")  # type: ignore[union-attr]


def test_price_per_1k_tokens_works_as_before() -> None:
    with budget(max_usd=1, price_per_1k_tokens={"input": 1.0, "output": 2.0}) as b:
        reservation = b.reserve(model="any/model", prompt_tokens=10, max_tokens=5)
        b.settle(reservation, Usage(10, 5), streamed=False, source="test")
    assert b.spent_exact == Decimal("0.010") + Decimal("0.010")


# ------------------------------------------------------------------------------------------ auto routing
def test_auto_reserves_at_the_highest_price_and_settles_at_the_serving_provider() -> None:
    auto = shekel.prices(LLAMA_70B)
    novita = shekel.prices(LLAMA_70B, provider="novita")
    assert auto is not None and novita is not None
    with budget(max_usd=1) as b:
        reservation = reserve(b, provider="auto", max_tokens=50)
        assert reservation.price == auto
        assert reservation.cost == auto.input_per_token * 100 + auto.output_per_token * 52
        b.settle(reservation, Usage(100, 40), streamed=False, source="test", provider="novita")
    assert b.spent_exact == novita.cost(100, 40)
    record = b.records[-1]
    assert record.provider == "novita" and "huggingface_novita" in (record.price_source or "")
    assert b.reserved == 0


def test_auto_without_a_provider_answer_is_charged_at_the_reserved_highest_price() -> None:
    auto = shekel.prices(LLAMA_70B)
    assert auto is not None
    with budget(max_usd=1) as b:
        reservation = reserve(b, provider="auto")
        b.settle(reservation, Usage(100, 40), streamed=False, source="test")
    assert b.spent_exact == auto.cost(100, 40)
    assert b.records[-1].provider == "auto"


def test_served_by_a_provider_without_a_price_keeps_the_reserved_price_and_says_so() -> None:
    auto = shekel.prices(LLAMA_70B)
    assert auto is not None
    with budget(max_usd=1) as b:
        reservation = reserve(b, provider="auto")
        b.settle(reservation, Usage(100, 40), streamed=False, source="test", provider="hf-inference")
    assert b.spent_exact == auto.cost(100, 40)
    assert b.records[-1].provider == "hf-inference"
    assert "no known price" in b.records[-1].notes[0]


def test_auto_over_per_provider_prices_of_a_pricing_file(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text(
        'unit = "per_1m_tokens"\n'
        '[models."my/model".providers.alpha]\ninput = 1\noutput = 9\n'
        '[models."my/model".providers.beta]\ninput = 3\noutput = 2\n'
    )
    with budget(pricing=file) as b:
        auto = b.price_for("my/model", "auto")
        assert auto is not None and (auto.input_per_1m, auto.output_per_1m) == (3, 9)
        assert b.price_for("my/model", "beta").output_per_1m == 2  # type: ignore[union-attr]
        assert b.price_for("my/model", "gamma") is None


# ------------------------------------------------------------------------------------------ unknown prices
def test_on_unknown_price_is_validated() -> None:
    with pytest.raises(BudgetConfigError, match="on_unknown_price must be 'warn', 'raise' or 'zero'"):
        budget(on_unknown_price="ignore")


def test_raise_refuses_the_call_before_anything_is_held() -> None:
    with budget(max_usd=1, on_unknown_price="raise") as b:
        with pytest.raises(PricingError) as caught:
            reserve(b, model="my/private-model", provider="together")
        assert b.reserved == 0 and b.calls == 0
    message = str(caught.value)
    assert "'my/private-model'" in message and "provider 'together'" in message
    assert "price_per_1k_tokens" in message and "SHEKEL_PRICING" in message


def test_raise_names_a_self_hosted_endpoint_and_explains_hf_inference() -> None:
    with budget(on_unknown_price="raise") as b:
        with pytest.raises(PricingError, match="self-hosted"):
            reserve(b, provider=None)
        with pytest.raises(PricingError, match="billed by compute time"):
            reserve(b, provider="hf-inference")


def test_nested_budgets_inherit_the_policy_unless_they_set_their_own() -> None:
    with budget(on_unknown_price="raise"):
        with budget() as inner, pytest.raises(PricingError):
            reserve(inner, model="my/model")
        with budget(on_unknown_price="zero") as relaxed:
            reserve(relaxed, model="my/model")


def test_warn_warns_once_per_model_and_counts_tokens() -> None:
    with budget(max_usd=1) as b:
        with pytest.warns(UserWarning, match="no price for model 'my/model'") as caught:
            for _ in range(3):
                b.settle(reserve(b, model="my/model"), Usage(10, 5), streamed=False, source="t")
        assert len(caught) == 1
    assert b.unpriced_calls == 3 and b.input_tokens == 30 and b.spent == 0


def test_zero_is_silent_but_summary_still_shows_the_unpriced_calls() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with budget(max_usd=1, on_unknown_price="zero") as b:
            b.settle(reserve(b, model="my/model"), Usage(10, 5), streamed=False, source="t")
    summary = b.summary()
    assert "1 UNPRICED" in summary and "1 unpriced call(s) (10 input / 5 output tokens)" in summary


# ------------------------------------------------------------------------------------------ cached input
def test_cached_input_is_charged_at_its_own_price_when_there_is_one() -> None:
    table = {"input": 1.0, "output": 2.0, "cached_input": 0.25}
    with budget(price_per_1k_tokens=table) as b:
        b.settle(reserve(b), Usage(100, 10, cached_input_tokens=40), streamed=False, source="t")
    assert b.spent_exact == Decimal("0.001") * 60 + Decimal("0.00025") * 40 + Decimal("0.002") * 10
    assert b.records[-1].notes == ()


def test_cached_input_without_a_cached_price_is_charged_in_full_and_noted() -> None:
    with budget() as b:
        b.settle(reserve(b), Usage(100, 10, cached_input_tokens=40), streamed=False, source="t")
    together = shekel.prices(LLAMA_70B, provider="together")
    assert together is not None and b.spent_exact == together.cost(100, 10)
    assert "40 cached input tokens were charged at the full input price" in b.records[-1].notes[0]
    assert b.to_dict()["records"][-1]["notes"] == list(b.records[-1].notes)


def test_budget_prices_reject_unknown_parts() -> None:
    with pytest.raises(BudgetConfigError, match="'cache_writes'"):
        budget(price_per_1k_tokens={"input": 1, "output": 1, "cache_writes": 1})


def test_budget_prices_take_a_cache_write_part() -> None:
    price = budget(price_per_1k_tokens={"input": 1, "output": 2, "cache_write": 1.25}).price_for("m")
    assert price is not None and price.cache_write_per_token == Decimal("0.00125")
    assert price.cost(10, 0, cache_write_tokens=4) == Decimal("0.001") * 6 + Decimal("0.00125") * 4


# ------------------------------------------------------------------------------------------ token caps
def test_max_total_tokens_is_validated() -> None:
    for bad in (0, -1, 1.5, True, "100"):
        with pytest.raises(BudgetConfigError, match="max_total_tokens"):
            budget(max_total_tokens=bad)  # type: ignore[arg-type]


def test_max_total_tokens_is_reserved_before_the_call() -> None:
    with budget(max_total_tokens=300) as b:
        first = reserve(b, max_tokens=100)  # 100 prompt + 100 + 2 margin = 202 held
        with pytest.raises(BudgetExceededError) as caught:
            reserve(b, max_tokens=100)
        assert caught.value.reason == "tokens" and "max_total_tokens" in str(caught.value)
        b.settle(first, Usage(100, 20), streamed=False, source="t")  # 120 used, 180 left
        second = reserve(b, prompt_tokens=50, max_tokens=None)
        assert second.max_tokens == 180 - 50 - 2  # the most output that still fits
        b.release(second)
        assert b.reserved == 0


def test_a_nested_token_cap_counts_the_children_and_caps_free_calls(tmp_path: Path) -> None:
    free = tmp_path / "free.json"
    free.write_text('{"unit": "per_1m_tokens", "models": {"free/model": {"input": 0, "output": 0}}}')
    with budget(max_usd=1, max_total_tokens=250, max_llm_calls=5, pricing=free) as outer:
        with budget(name="inner") as inner:
            r = reserve(inner, model="free/model", provider=None, max_tokens=10)
            assert r.price is not None and r.price.cost(100, 10) == 0  # priced, at zero
            inner.settle(r, Usage(100, 10), streamed=False, source="t")
        with pytest.raises(BudgetExceededError, match="tokens"):
            reserve(outer, model="free/model", provider=None, max_tokens=100)
    assert outer.calls == 1 and outer.unpriced_calls == 0 and outer.input_tokens == 100
    assert outer.to_dict()["max_total_tokens"] == 250


# ------------------------------------------------------------------------------------------ prices()
def test_prices_outside_a_budget_reads_the_environment_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "p.toml"
    file.write_text(
        f'unit = "per_1k_tokens"\n[models."{LLAMA_70B}".providers.together]\ninput = 1\noutput = 2\n'
    )
    monkeypatch.setenv("SHEKEL_PRICING", str(file))
    price = shekel.prices(LLAMA_70B, provider="together")
    assert price is not None and price.source == "pricing file 'p.toml', provider 'together'"
    other = shekel.prices(LLAMA_70B, provider="novita")
    assert other is not None and "genai-prices" in other.source
