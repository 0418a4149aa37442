"""Attacks on shared budgets (issue 9): real InferenceClient / OpenAI SDK, the fake server, a real
redis-server and real SQLite files."""

from __future__ import annotations

import os
import signal
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import shekel
from shekel import BudgetConfigError, BudgetExceededError, StoreError, budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens at the server
CALL_COST = Decimal("0.001") * 5 + Decimal("0.002") * 5  # max_tokens=5: $0.015 per call


def _shared(store: Any, name: str, **kwargs: Any) -> shekel.Budget:
    return budget(name=name, store=store, price_per_1k_tokens=PRICES, **kwargs)


def test_one_name_nested_twice_in_one_store_charges_a_call_once(
    server: FakeInferenceServer, store_url: str
) -> None:
    """Expected: a function that opens the tenant's budget, called inside another that opened it too
    (same name, same store), charges one call once: spent == $0.015 (or refuses the nesting at budget()
    time with a BudgetConfigError saying why).
    Observed: Redis charges the call twice (spent == $0.03 for one request: the hold id is set once, then
    SETTLE adds the charge once per KEYS entry); SQLite raises StoreError "could not reserve a call:
    IntegrityError: UNIQUE constraint failed: holds.id, holds.name. Check that the store is reachable..."
    (a misleading message: the store is fine).
    """
    client = InferenceClient(base_url=server.url)
    with _shared(store_url, "tenant:1", max_usd=1) as outer:
        with _shared(store_url, "tenant:1", max_usd=1):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
        spent = outer.spent_exact
    assert server.request_count == 1
    assert spent == CALL_COST, spent


def test_names_with_odd_characters_do_not_share_a_ledger(server: FakeInferenceServer, store_url: str) -> None:
    """Expected: every distinct name is its own ledger, whatever characters it holds."""
    client = InferenceClient(base_url=server.url)
    names = ["a", "a:b", "a}:b", "{a}", "a b", "ä", "a|b", "a}", "a}:holds"]
    for name in names:
        with _shared(store_url, name, max_usd=1):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
    for name in names:
        with _shared(store_url, name, max_usd=1) as b:
            assert b.spent_exact == CALL_COST and b.calls == 1, (name, b.spent_exact, b.calls)


def test_an_empty_name_is_a_config_error(store_url: str) -> None:
    """Expected: a shared budget with name="" (or only spaces) is refused at budget() time, as one
    without a name is."""
    for name in ("", "   "):
        with pytest.raises(BudgetConfigError):
            budget(max_usd=1, name=name, store=store_url)


def test_a_chain_across_sqlite_and_redis_releases_the_first_hold_when_the_second_refuses(
    server: FakeInferenceServer, redis_store_url: str, tmp_path: Path
) -> None:
    """Expected (issue 9): where the chain spans stores, holds taken so far are released when a later one
    fails: after a refusal by the Redis budget, the SQLite budget holds nothing."""
    client = InferenceClient(base_url=server.url)
    sqlite_url = f"sqlite:///{tmp_path / 'b.db'}"
    with _shared(sqlite_url, "outer", max_usd=1) as outer:
        with _shared(redis_store_url, "inner", max_usd=0.001):
            with pytest.raises(BudgetExceededError):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
        figures = (outer.reserved, outer.calls, outer.spent)
    assert figures == (0, 0, 0), figures
    assert server.request_count == 0


def test_store_env_without_shekel_store_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Expected: store="env" with SHEKEL_STORE unset is a BudgetConfigError naming SHEKEL_STORE."""
    monkeypatch.delenv("SHEKEL_STORE", raising=False)
    with pytest.raises(BudgetConfigError, match="SHEKEL_STORE"):
        budget(max_usd=1, name="x", store="env")


def _redis_pid(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.info("server")["process_id"])


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_redis_dying_while_a_call_is_in_flight_still_counts_the_call_here(
    server: FakeInferenceServer, policy: str
) -> None:
    """The store dies after the hold was taken, while the request is on its way (a real redis-server,
    killed with SIGKILL by its process id).

    Expected: the call happened and its answer came back, so the caller gets its answer (or a StoreError)
    and the budget's own records count it (1 call, $0.015): money spent is never lost from this process's
    view. Observed: see the assertion message.
    """
    openai = pytest.importorskip("openai")
    import httpx

    from tests._redis_server import redis_server

    shekel.install()
    with redis_server() as url:
        pid = _redis_pid(url)

        def kill(request: httpx.Request) -> None:
            os.kill(pid, signal.SIGKILL)

        http = httpx.Client(event_hooks={"request": [kill]})
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, http_client=http)
        outcome = "answered"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _shared(url, "dies", max_usd=1, on_store_error=policy) as b:
                try:
                    client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
                except StoreError:
                    outcome = "StoreError"
                records = list(b.records)
    assert server.request_count == 1
    costs = [r.cost for r in records]
    assert len(records) == 1 and Decimal(str(costs[0])) == CALL_COST, (outcome, costs)
