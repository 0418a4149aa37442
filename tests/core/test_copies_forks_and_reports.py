"""Budgets that are copied, forked or entered from two threads at once; reports of deep trees; warnings.

The third review round found each of these: a forked child spending a private copy of the cap, a copy
that charged the original while reporting $0, two parents attaching one budget, a 1,000-deep tree that
broke ``summary()``, and warnings that pointed at shekel's lines and grew ``__warningregistry__`` forever.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest

import shekel
from shekel import BudgetConfigError, BudgetExceededError, ForkedBudgetError, budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient

PRICES = {"input": 1.0, "output": 2.0}
MESSAGES = [{"role": "user", "content": "hi there"}]

fork_only = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)


# ------------------------------------------------------------------------------------------ forks
_url = ""


def _spend_in_child(_: int) -> str:
    client = InferenceClient(base_url=_url)
    try:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
    except ForkedBudgetError as exc:
        return f"refused: {exc}"
    return "spent"


@fork_only
def test_a_forked_child_cannot_spend_a_private_copy_of_an_in_process_budget(
    server: FakeInferenceServer,
) -> None:
    global _url
    _url = server.url
    with budget(max_usd=0.20, price_per_1k_tokens=PRICES) as b:
        with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_spend_in_child, range(4)))
    assert all(r.startswith("refused") for r in results), results
    assert "store=" in results[0] and "forked" in results[0]
    assert server.request_count == 0 and b.spent == 0
    # The parent's own budget is untouched by its children and still works here.
    with b:
        InferenceClient(base_url=server.url).chat_completion(MESSAGES, model="m", max_tokens=5)
    assert b.calls == 1


_module_budget: shekel.Budget | None = None


def _enter_inherited_budget(_: int) -> str:
    assert _module_budget is not None
    try:
        with _module_budget:
            InferenceClient(base_url=_url).chat_completion(MESSAGES, model="m", max_tokens=5)
    except ForkedBudgetError:
        return "refused"
    return "spent"


def _fresh_budget_in_child(_: int) -> str:
    with budget(max_usd=0.20, price_per_1k_tokens=PRICES) as b:
        InferenceClient(base_url=_url).chat_completion(MESSAGES, model="m", max_tokens=5)
    return "spent" if b.calls == 1 else "not counted"


@fork_only
def test_a_budget_made_before_the_fork_and_entered_in_the_child_is_refused_one_made_there_works(
    server: FakeInferenceServer,
) -> None:
    global _url, _module_budget
    _url = server.url
    _module_budget = budget(max_usd=0.20, price_per_1k_tokens=PRICES)
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        assert list(pool.map(_enter_inherited_budget, range(2))) == ["refused", "refused"]
        assert list(pool.map(_fresh_budget_in_child, range(2))) == ["spent", "spent"]
    assert server.request_count == 2


def test_pickling_or_copying_a_budget_is_a_clear_error() -> None:
    b = budget(max_usd=1, price_per_1k_tokens=PRICES)
    for attempt in (lambda: pickle.dumps(b), lambda: copy.copy(b), lambda: copy.deepcopy(b)):
        with pytest.raises(TypeError, match=r"cannot be pickled or copied.*store=.*fresh\(\)") as error:
            attempt()
        assert "RLock" not in str(error.value)
    assert b.fresh().limit == 1


# ------------------------------------------------------------------------------------------ attaching
def _enter_under(
    parent: shekel.Budget, shared: shekel.Budget, barrier: threading.Barrier, outcomes: list[str]
) -> None:
    with parent:
        barrier.wait()
        try:
            with shared:
                outcomes.append(parent.name)
        except BudgetConfigError:
            outcomes.append("refused")


def test_two_threads_entering_a_fresh_budget_under_different_parents_cannot_both_attach_it() -> None:
    for _ in range(200):
        left, right = budget(max_usd=1, name="left"), budget(max_usd=1, name="right")
        shared = budget(max_usd=1, name="shared")
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=_enter_under, args=(p, shared, barrier, outcomes)) for p in (left, right)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) in (["left", "refused"], ["refused", "right"]), outcomes
        assert shared.parent is not None and shared.parent.name in outcomes
        assert shared in shared.parent.children


# ------------------------------------------------------------------------------------------ reports
def test_summary_and_to_dict_of_a_budget_nested_1000_deep() -> None:
    depth = 1000
    budgets: list[shekel.Budget] = []
    entered: list[Any] = []
    for i in range(depth):
        b = budget(max_usd=1000, name=f"b{i}", price_per_1k_tokens=PRICES)
        entered.append(b.__enter__())
        budgets.append(b)
    try:
        reservation = budgets[-1].reserve(model="m", prompt_tokens=10, max_tokens=5)
        budgets[-1].settle(reservation, shekel.Usage(10, 5), streamed=False, source="test")
    finally:
        for b in reversed(budgets):
            b.__exit__(None, None, None)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # no recursion through the tree
    try:
        snapshot = budgets[0].to_dict()
        text = budgets[0].summary()
    finally:
        sys.setrecursionlimit(limit)
    node = snapshot
    for _ in range(depth - 1):
        (node,) = node["children"]
    assert node["path"].endswith("/b999") and node["calls"] == 1
    assert "b999" in text and text.count("budget '") == depth
    # Indentation stops growing after a few levels: the text grows with the tree, not with its square.
    assert max(len(line) - len(line.lstrip()) for line in text.splitlines()) <= 40
    assert len(text) < 400 * depth


def test_summary_shows_the_provider_and_failed_requests(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url, provider="together")
    server.headers["x-inference-provider"] = "together"
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
        server.fail_next(503)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
            client.chat_completion(MESSAGES, model="m", max_tokens=5)
    text = b.summary()
    assert "provider" in text and "together" in text
    assert "calls 1 (+1 failed)" in text and "1 failed" in text
    assert b.to_dict()["models"]["m"]["providers"] == ["together"]


# ------------------------------------------------------------------------------------------ warnings
def test_warnings_point_at_the_users_line_and_leave_no_registry_behind(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    registry = globals().setdefault("__warningregistry__", {})
    registry.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for i in range(300):  # per-request budgets, each warning about its own unpriced model
            with budget(max_usd=1, name=f"request-{i}"):
                client.chat_completion(MESSAGES, model=f"unpriced/model-{i}", max_tokens=2)  # the line
    assert len(caught) == 300
    assert {w.filename for w in caught} == {__file__}
    assert all("unpriced/model-" in str(w.message) for w in caught)
    assert len(globals().get("__warningregistry__", {})) <= 1  # bounded: not one entry per message


def test_warn_at_warning_points_at_the_users_line(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with pytest.warns(UserWarning, match="warn_at") as caught:
        with budget(max_usd=1, price_per_1k_tokens=PRICES, warn_at=0.001):
            client.chat_completion(MESSAGES, model="m", max_tokens=2)
    assert caught[0].filename == __file__


# ------------------------------------------------------------------------------------------ failed calls
def test_every_request_sent_counts_against_max_llm_calls_so_a_retry_loop_is_bounded(
    server: FakeInferenceServer,
) -> None:
    client = InferenceClient(base_url=server.url)
    server.fail_next(503, times=10)
    attempts = 0
    with budget(max_llm_calls=3, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(BudgetExceededError, match="LLM calls"):
            while True:  # a retry loop, as the docs advise for 503s
                try:
                    attempts += 1
                    client.chat_completion(MESSAGES, model="m", max_tokens=5)
                    break
                except huggingface_hub.errors.HfHubHTTPError:
                    continue
    assert server.request_count == 3 and attempts == 4
    assert (b.calls, b.failed_calls, b.spent_exact) == (0, 3, Decimal(0))
    assert [r.outcome for r in b.records] == ["error"] * 3
    assert b.to_dict()["failed_calls"] == 3


def test_a_client_timeout_is_charged_what_the_call_held(server: FakeInferenceServer) -> None:
    server.latency = 1.0
    client = InferenceClient(base_url=server.url, timeout=0.1)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        for _ in range(2):
            with pytest.raises((huggingface_hub.errors.InferenceTimeoutError, httpx.TimeoutException)):
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert server.request_count == 2 and b.failed_calls == 2 and b.calls == 0
    assert all(r.outcome == "unknown" and r.cost > 0 for r in b.records)
    assert b.spent_exact == sum(r.cost for r in b.records) and b.reserved == 0


def test_a_connection_that_never_opens_costs_nothing_and_counts_nowhere() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = InferenceClient(base_url=f"http://127.0.0.1:{port}")
    with budget(max_llm_calls=1, price_per_1k_tokens=PRICES) as b:
        for _ in range(3):
            with pytest.raises(Exception):  # noqa: B017 - httpx's connection error, unchanged
                client.chat_completion(MESSAGES, model="m", max_tokens=5)
    assert b.records == [] and b.failed_calls == 0 and b.spent == 0


# ------------------------------------------------------------------------------------------ secrets
@pytest.mark.parametrize("secret", ["?api_key=hf_SECRETSECRET", ";token=hf_SECRETSECRET/x"])
def test_a_secret_in_a_fallback_model_url_never_reaches_records_reports_or_errors(
    server: FakeInferenceServer, secret: str
) -> None:
    client = InferenceClient(base_url=server.url)
    fallback_url = f"{server.url}/{secret}"
    fallback = {"at_pct": 0.01, "model": fallback_url}
    with budget(max_usd=0.50, price_per_1k_tokens=PRICES, fallback=fallback) as b:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
        client.chat_completion(MESSAGES, model="m", max_tokens=5)  # past 1%: sent to the fallback
        with pytest.raises(BudgetExceededError) as refused:
            client.chat_completion(MESSAGES, model="m", max_tokens=500)
    assert b.records[1].fallback_from == "m"
    shown = str(refused.value) + b.summary() + repr(b.to_dict()) + repr(b.records)
    assert "hf_SECRETSECRET" not in shown


# ------------------------------------------------------------------------------------------ providers
PROVIDER_PRICES = """
unit = "per_1k_tokens"
[models.m.providers.novita]
input = 0.5
output = 0.5
[models.m.providers.together]
input = 2.0
output = 0.25
"""


def test_the_provider_that_answered_wins_and_the_record_and_price_agree(
    server: FakeInferenceServer, tmp_path: Any
) -> None:
    """A call sent to novita and answered by together: the record names together, the one that served and
    bills the call; each part of together's price is charged, capped at the part reserved for novita (the
    cap was checked at novita's price), and the record says so."""
    pricing = tmp_path / "prices.toml"
    pricing.write_text(PROVIDER_PRICES)
    client = InferenceClient(base_url=server.url, provider="novita")
    server.headers["x-inference-provider"] = "together"
    with budget(max_usd=1, pricing=pricing) as b:
        client.chat_completion(MESSAGES, model="m", max_tokens=5)
    (record,) = b.records
    assert record.provider == "together"
    # 5 input tokens at min(2.0, 0.5) per 1k, 5 output tokens at min(0.25, 0.5) per 1k
    assert record.cost == Decimal("0.0005") * 5 + Decimal("0.00025") * 5 == b.spent_exact
    assert "capped at the price the call was reserved at (the call asked for 'novita')" in record.price_source
    assert any("above the price reserved" in note for note in record.notes)
