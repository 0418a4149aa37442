"""``shekel status``, ``report`` (table, JSON, CSV, PNG and SVG plots), ``reset`` and ``prices``, on a store
that ``shekel run`` filled through the local server."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import pytest

from shekel.testing import FakeInferenceServer

from .conftest import Shekel, assert_clean


@pytest.fixture
def store(shekel: Shekel, server: FakeInferenceServer, chat_script: Path, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    for name, calls in (("nightly", "4"), ("tenant:42", "2")):
        done = shekel(
            "run", "--budget", "0.5", "--price-per-1k", "1,2", "--store", url, "--name", name, "--window", "day",
            str(chat_script), server.url, calls,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    return url


def test_status_lists_every_budget_with_its_figures(shekel: Shekel, store: str) -> None:
    table = shekel("status", "--store", store)
    assert table.returncode == 0, table.stderr
    assert "nightly" in table.stdout and "tenant:42" in table.stdout and "$0.500000" in table.stdout
    assert "UTC" in table.stdout  # a calendar window says when it resets
    done = shekel("status", "--store", store, "nightly", "--json")
    (row,) = json.loads(done.stdout)
    assert row["name"] == "nightly" and row["calls"] == 4 and row["limit"] == "0.5"
    assert row["window"] == "day" and row["resets_at"] and Decimal(row["reserved"]) == 0
    assert Decimal(row["spent"]) > 0
    missing = shekel("status", "--store", store, "nobody")
    assert missing.returncode == 2 and "no shared budget named 'nobody'" in missing.stderr


def test_report_as_a_table_json_and_csv(shekel: Shekel, store: str, tmp_path: Path) -> None:
    table = shekel("report", "--store", store, "--by", "budget")
    assert table.returncode == 0, table.stderr
    assert "nightly" in table.stdout and "tenant:42" in table.stdout and "total" in table.stdout
    data = json.loads(shekel("report", "--store", store, "--json").stdout)
    assert data["by"] == "model" and data["calls"] == 6 and data["rows"][0]["model"] == "m"
    one = json.loads(shekel("report", "--store", store, "--name", "nightly", "--by", "day", "--json").stdout)
    assert one["calls"] == 4 and len(one["rows"]) == 1
    done = shekel("report", "--store", store, "--by", "provider", "--csv", "spend.csv")
    assert done.returncode == 0 and "wrote spend.csv" in done.stdout
    with (tmp_path / "spend.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["calls"] == "6" and Decimal(rows[0]["spent_usd"]) == Decimal(data["spent"])


def test_report_plots_real_png_and_svg_files(shekel: Shekel, store: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for by in ("model", "hour"):
        png = shekel("report", "--store", store, "--name", "nightly", "--by", by, "--plot", f"{by}.png")
        assert png.returncode == 0, png.stderr
        assert (tmp_path / f"{by}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = shekel("report", "--store", store, "--by", "budget", "--plot", "spend.svg")
    assert svg.returncode == 0, svg.stderr
    root = ET.parse(tmp_path / "spend.svg").getroot()
    assert root.tag.endswith("svg")
    text = (tmp_path / "spend.svg").read_text()
    assert "cumulative spend" in text and "tenant:42" in text


def test_reset_clears_a_budget(shekel: Shekel, store: str) -> None:
    done = shekel("reset", "--store", store, "nightly", "--yes")
    assert done.returncode == 0 and "reset shared budget 'nightly'" in done.stdout
    (row,) = json.loads(shekel("status", "--store", store, "tenant:42", "--json").stdout)
    assert row["calls"] == 2  # the other budget is untouched
    assert shekel("status", "--store", store, "nightly").returncode == 2  # gone, window and all
    assert shekel("reset", "--store", store, "nightly", "--yes").returncode == 2
    # The log of settled calls is history: the report still shows what the budget spent before.
    assert json.loads(shekel("report", "--store", store, "--name", "nightly", "--json").stdout)["calls"] == 4


def test_prices_shows_what_shekel_prices_returns(shekel: Shekel, tmp_path: Path) -> None:
    pricing = tmp_path / "prices.toml"
    pricing.write_text('unit = "per_1m_tokens"\n[models."my/model"]\ninput = 0.5\noutput = 1.5\n')
    from .conftest import environment

    env = environment(SHEKEL_PRICING=str(pricing))
    one = shekel("prices", "my/model", "--json", env=env)
    assert one.returncode == 0, one.stderr
    (row,) = json.loads(one.stdout)
    assert (row["input_per_1m"], row["output_per_1m"]) == ("0.5", "1.5") and "prices.toml" in row["source"]
    listed = shekel("prices", env=env)
    assert listed.returncode == 0 and "my/model" in listed.stdout
    unknown = shekel("prices", "nobody/knows-this-model")
    assert unknown.returncode == 1 and "no price known for 'nobody/knows-this-model'" in unknown.stderr
    assert_clean(one.stdout, listed.stdout, unknown.stderr)


def test_prices_of_the_bundled_data(shekel: Shekel) -> None:
    pytest.importorskip("genai_prices")
    from shekel import prices

    expected = prices("meta-llama/Llama-3.1-8B-Instruct", provider="cerebras")
    assert expected is not None
    done = shekel("prices", "meta-llama/Llama-3.1-8B-Instruct", "--provider", "cerebras", "--json")
    (row,) = json.loads(done.stdout)
    assert Decimal(row["input_per_1m"]) == expected.input_per_1m and row["provider"] == "cerebras"
    listed = shekel("prices", "--provider", "cerebras", "--json")
    assert any(r["model"].lower() == "meta-llama/llama-3.1-8b-instruct" for r in json.loads(listed.stdout))


def test_a_store_that_cannot_be_read_is_one_line_and_exit_1(shekel: Shekel) -> None:
    done = shekel("status", "--store", "sqlite:////proc/no-such-dir/budgets.db")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert (
        done.stderr.startswith("shekel status: error: shared budget store") and "Traceback" not in done.stderr
    )
