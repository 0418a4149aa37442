"""Secrets in store URLs and fallback model URLs; what the package declares.

Issue 9: "Errors name the store without its password." Issue 13, item 7: a secret in a fallback model URL
must be scrubbed like the primary model's.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from importlib.metadata import requires
from pathlib import Path

import pytest

from shekel import budget
from shekel.ledger.shared import display_url
from shekel.testing import FakeInferenceServer


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379/0?password=s3cr3tpw",  # redis-py reads the password from the query
        "redis://user:p@ss-s3cr3tpw@cache:6379/0",  # redis-py reads 'p@ss-s3cr3tpw' (rpartition on '@')
    ],
)
def test_a_store_url_password_never_shows(url: str) -> None:
    """display_url (used by errors, summary(), to_dict()) shows 'redis://cache:6379/0?password=s3cr3tpw' and
    'redis://user:***@ss-s3cr3tpw@cache:6379/0'."""
    from redis.connection import parse_url  # what redis-py will use as the password

    assert "s3cr3tpw" in parse_url(url)["password"]
    assert "s3cr3tpw" not in display_url(url)
    try:
        budget(max_usd=1, name="x", store=url)
    except Exception as error:
        assert "s3cr3tpw" not in str(error)


_WORKER = """
import sys
from huggingface_hub import InferenceClient
from shekel import budget
url, store = sys.argv[1], sys.argv[2]
secret = url + "/v1/chat/completions?api_key=hf_SECRETSECRET"
with budget(max_usd=1, name="t", store=store, lease=1, price_per_1k_tokens={"input": 1, "output": 2},
            fallback={"at_pct": 1e-9, "model": secret}) as b:
    b._shared.seen.spent = 10**9  # as after a first call: the fallback is due
    print("calling", flush=True)
    InferenceClient(base_url=url).chat_completion([{"role": "user", "content": "hi"}], model="m", max_tokens=3)
"""


def test_a_fallback_model_secret_is_not_written_to_the_store(tmp_path: Path) -> None:
    """The hold's model (holds.model) is the fallback URL with its api_key; a worker that dies mid-call leaves
    it in the store's log of settled calls for good (the expired entry)."""
    store = f"sqlite:///{tmp_path / 'b.db'}"
    with FakeInferenceServer(latency=30) as server:
        worker = subprocess.Popen(
            [sys.executable, "-c", _WORKER, server.url, store], stdout=subprocess.PIPE, text=True
        )
        assert worker.stdout is not None
        worker.stdout.readline()
        time.sleep(1.0)
        with sqlite3.connect(tmp_path / "b.db") as db:
            in_flight = [row[0] for row in db.execute("SELECT model FROM holds")]
        worker.kill()
        worker.wait()
        worker.stdout.close()
        time.sleep(1.2)
        assert budget(max_usd=1, name="t", store=store).failed_calls == 1  # a reader sweeps the dead hold
        with sqlite3.connect(tmp_path / "b.db") as db:
            logged = [row[0] for row in db.execute("SELECT model FROM calls")]
    assert not any("SECRET" in str(m) for m in in_flight + logged), (in_flight, logged)


def test_platformdirs_is_declared_since_the_default_store_path_depends_on_it() -> None:
    """stores.py: "platformdirs is a dependency; a stripped install falls back to XDG's default". It is not
    declared, so `sqlite://` names another file (on macOS and Windows) in an environment where nothing else
    pulled platformdirs in: two processes on one machine, one budget name, two ledgers."""
    declared = " ".join(requires("shekel") or [])
    assert "platformdirs" in declared


def test_pickling_a_shared_budget_does_not_tell_the_user_to_give_it_a_store(tmp_path: Path) -> None:
    """pickle.dumps(b) of a budget that *has* a store says "its ledger lives in this process ... Give the
    budget a shared store": wrong for a shared budget (pass b.fresh()'s configuration, or build it in the
    worker)."""
    import pickle

    shared = budget(max_usd=1, name="job", store=f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(TypeError) as refused:
        pickle.dumps(shared)
    assert "Give the budget a shared store" not in str(refused.value), str(refused.value)


def test_a_rolling_window_counts_a_charge_at_most_w_plus_w_over_60_seconds() -> None:
    """docs/shared-budgets.md: "a charge counts for between W and W + W/60 seconds, one bucket longer at most
    (1.7% of the window)". Buckets are ceil(W/60) whole seconds, so for W=2 a charge counts for up to 3 s
    (50% longer), for W=61 up to 63 s."""
    from shekel.ledger.shared import parse_window

    for seconds in (2, 61, 90):
        window = parse_window(seconds)
        charged_at = 1_000_000.0 * window.bucket_seconds  # type: ignore[operator]
        later = charged_at + seconds + seconds / 60 + 0.01
        assert window.bucket(charged_at) < window.first_bucket(later), (
            f"W={seconds}: still counted at W + W/60"
        )
