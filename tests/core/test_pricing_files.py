"""Pricing files (``budget(pricing=...)`` and ``SHEKEL_PRICING``): good ones, and broken ones named precisely."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import shekel
from shekel import PricingError, budget
from shekel._pricing_files import MAX_FILE_BYTES

GOOD_TOML = """\
unit = "per_1m_tokens"

[models."org/model-a"]
input = 0.88
output = 1.2
cached_input = 0.44

[models."org/model-a".providers.novita]
input = 0.5
output = 0.6

[models."org/model-b".providers.together]
input = 2
output = 3

[models."*"]
input = 10
output = 20
"""

GOOD_JSON = """{
  "unit": "per_1k_tokens",
  "models": {
    "org/model-a": {"input": 0.001, "output": "0.002",
                    "providers": {"novita": {"input": 0.0005, "output": 0.0006}}}
  }
}"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_toml_file_per_1m_tokens(tmp_path: Path) -> None:
    with budget(pricing=write(tmp_path, "prices.toml", GOOD_TOML)) as b:
        a = b.price_for("org/model-a", "together")
        assert a is not None
        assert (a.input_per_1m, a.output_per_1m) == (Decimal("0.88"), Decimal("1.2"))
        assert a.cached_input_per_token == Decimal("0.44") / 1_000_000
        assert a.source == "pricing file 'prices.toml'"
        novita = b.price_for("org/model-a", "novita")
        assert novita is not None and novita.output_per_1m == Decimal("0.6") and novita.provider == "novita"
        # A model priced only for one provider: other providers fall through to "*".
        assert b.price_for("org/model-b", "together").input_per_1m == 2  # type: ignore[union-attr]
        assert b.price_for("org/model-b", "novita").input_per_1m == 10  # type: ignore[union-attr]
        assert b.price_for("org/anything", None).output_per_1m == 20  # type: ignore[union-attr]


def test_a_json_file_per_1k_tokens_is_the_same_prices(tmp_path: Path) -> None:
    with budget(pricing=write(tmp_path, "prices.json", GOOD_JSON)) as b:
        a = b.price_for("org/model-a", "together")
        assert a is not None and (a.input_per_token, a.output_per_token) == (
            Decimal("0.000001"),
            Decimal("0.000002"),
        )
        assert b.price_for("org/model-a", "novita").input_per_1m == Decimal("0.5")  # type: ignore[union-attr]


def test_exact_amounts_survive_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", 'unit = "per_1k_tokens"\n[models."m"]\ninput = 0.1\noutput = 0.7\n')
    with budget(pricing=path) as b:
        price = b.price_for("m", None)
        assert price is not None and price.cost(3, 3) == Decimal("0.0024")  # not 0.0024000000000000002


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", 'unit = "per_1k_tokens"\n[models."m"]\ninput = 1\noutput = 1\n')
    assert budget(pricing=path).price_for("m", None).input_per_token == Decimal("0.001")  # type: ignore[union-attr]
    path.write_text('unit = "per_1k_tokens"\n[models."m"]\ninput = 2.5\noutput = 1\n')
    assert budget(pricing=path).price_for("m", None).input_per_token == Decimal("0.0025")  # type: ignore[union-attr]


BROKEN = [
    ("missing.toml", None, "cannot be read"),
    ("prices.yaml", "unit: per_1k_tokens", "must end in .toml or .json, got '.yaml'"),
    ("p.toml", 'unit = "per_1k_tokens"\n[models."m"\ninput = 1\n', r"not valid TOML: .*line 2"),
    ("p.json", '{"unit": "per_1k_tokens",\n "models": {,}}', "not valid JSON at line 2, column"),
    (
        "p.toml",
        '[models."m"]\ninput = 1\noutput = 1\n',
        '\'unit\' must be "per_1k_tokens" or "per_1m_tokens", got None',
    ),
    ("p.toml", 'unit = "per_token"\n[models."m"]\ninput = 1\noutput = 1\n', "got 'per_token'"),
    ("p.toml", 'unit = "per_1k_tokens"\nmodel = {}\n', "unknown top-level key\\(s\\) 'model'"),
    ("p.toml", 'unit = "per_1k_tokens"\n', "'models' must be a non-empty table"),
    ("p.toml", 'unit = "per_1k_tokens"\n[models."m"]\ninput = 1\n', "models.m is missing 'output'"),
    (
        "p.toml",
        'unit = "per_1k_tokens"\n[models."org/m"]\ninput = -1\noutput = 1\n',
        'models."org/m".input must not be negative',
    ),
    (
        "p.toml",
        'unit = "per_1k_tokens"\n[models.m]\ninput = "cheap"\noutput = 1\n',
        "models.m.input must be a number, got 'cheap'",
    ),
    (
        "p.toml",
        'unit = "per_1k_tokens"\n[models.m]\ninput = true\noutput = 1\n',
        "models.m.input must be a number, got True",
    ),
    (
        "p.toml",
        'unit = "per_1k_tokens"\n[models.m]\ninput = nan\noutput = 1\n',
        "models.m.input must be a finite number",
    ),
    (
        "p.toml",
        'unit = "per_1k_tokens"\n[models.m]\ninput = 1\noutput = 1\ncache = 1\n',
        "models.m has unknown key\\(s\\) 'cache'",
    ),
    ("p.toml", 'unit = "per_1k_tokens"\n[models]\nm = 1\n', "models.m must be a table"),
    ("p.toml", 'unit = "per_1k_tokens"\n[models.m]\nproviders = 1\n', "models.m.providers must be a table"),
    (
        "p.toml",
        'unit = "per_1k_tokens"\n[models.m.providers.novita]\ninput = 1\n',
        "models.m.providers.novita is missing 'output'",
    ),
    (
        "p.toml",
        'unit = "per_1k_tokens"\n[models.m.providers.novita]\ninput = 1\noutput = 1\nextra = 2\n',
        "providers.novita has unknown key\\(s\\) 'extra'",
    ),
]


@pytest.mark.parametrize(("name", "text", "problem"), BROKEN)
def test_a_broken_file_fails_at_budget_time_naming_the_file_and_the_problem(
    tmp_path: Path, name: str, text: str | None, problem: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(PricingError, match=problem) as caught:
        budget(pricing=path)
    assert name in str(caught.value)


def test_pricing_must_be_a_path() -> None:
    with pytest.raises(PricingError, match=r"must be the path of a \.toml or \.json pricing file"):
        budget(pricing={"input": 1})  # type: ignore[arg-type]


def test_a_broken_environment_file_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHEKEL_PRICING", str(tmp_path / "gone.toml"))
    with pytest.raises(PricingError, match="SHEKEL_PRICING"):
        budget()
    with pytest.raises(PricingError, match=r"gone\.toml"):
        shekel.prices("org/model")


# ------------------------------------------------------------------------------------------ what is read
# A file that never ends (a FIFO without a writer blocks open(); /dev/zero never stops) is tried in a child
# process with a deadline and a memory cap, so that a regression fails the test instead of hanging the suite.
_TRY_IN_A_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
from shekel import PricingError, budget
try:
    budget(pricing=sys.argv[1])
except PricingError as exc:
    print(exc)
else:
    print("no error")
"""


def _budget_in_a_child(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _TRY_IN_A_CHILD, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "prices.toml"
    os.mkfifo(fifo)
    out = _budget_in_a_child(fifo)
    assert "prices.toml" in out and "is a named pipe (FIFO), not a regular file" in out


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_a_device_is_refused_without_being_read(tmp_path: Path) -> None:
    zero = tmp_path / "prices.json"
    zero.symlink_to("/dev/zero")  # the suffix is right; what it points at is not a file
    out = _budget_in_a_child(zero)
    assert "prices.json" in out and "is a character device, not a regular file" in out


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prices.toml").mkdir()
    with pytest.raises(PricingError, match=r"prices\.toml' .*is a directory, not a regular file"):
        budget(pricing=tmp_path / "prices.toml")


def test_a_file_of_the_wrong_kind_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    # No suffix check after the fact: a '.yaml' FIFO must not block either.
    with pytest.raises(PricingError, match=r"must end in \.toml or \.json, got '\.txt'"):
        budget(pricing=tmp_path / "gone.txt")  # not even there: the suffix is checked first


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "prices.json"
    with big.open("wb") as f:  # sparse: no disk is used
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(PricingError, match=rf"prices\.json' is {MAX_FILE_BYTES + 1:,} bytes.* at most"):
        budget(pricing=big)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"unit": "per_1k_tokens", "models": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("deep.toml", 'unit = "per_1k_tokens"\nmodels = ' + "[" * 100_000 + "]" * 100_000 + "\n"),
    ],
)
def test_deeply_nested_files_are_a_pricing_error_not_a_recursion_error(
    tmp_path: Path, name: str, text: str
) -> None:
    with pytest.raises(PricingError, match=rf"{name}' is nested too deeply"):
        budget(pricing=write(tmp_path, name, text))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "long.json",
            '{"unit": "per_1k_tokens", "models": {"m": {"input": 1' + "0" * 5000 + ', "output": 1}}}',
        ),
        ("long.toml", 'unit = "per_1k_tokens"\n[models.m]\ninput = 1' + "0" * 5000 + "\noutput = 1\n"),
    ],
)
def test_numbers_of_thousands_of_digits_are_a_pricing_error_not_a_value_error(
    tmp_path: Path, name: str, text: str
) -> None:
    with pytest.raises(PricingError, match=name) as caught:
        budget(pricing=write(tmp_path, name, text))
    assert "0" * 100 not in str(caught.value)  # the number is not printed in full


def test_a_token_given_as_the_path_is_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_NotARealTokenButLooksLikeOne12345678"
    monkeypatch.setenv("SHEKEL_PRICING", token)  # the wrong variable, set by mistake
    with pytest.raises(PricingError, match="SHEKEL_PRICING") as caught:
        budget()
    assert token not in str(caught.value) and "must end in .toml or .json" in str(caught.value)


def test_a_token_in_a_price_is_not_printed(tmp_path: Path) -> None:
    token = "hf_NotARealTokenButLooksLikeOne12345678"
    path = write(tmp_path, "p.toml", f'unit = "per_1k_tokens"\n[models.m]\ninput = "{token}"\noutput = 1\n')
    with pytest.raises(PricingError, match=r"models\.m\.input must be a number") as caught:
        budget(pricing=path)
    assert token not in str(caught.value)
