"""Budget configuration, nesting, decorators, warnings, fallback and call limits (real client, local server)."""

from __future__ import annotations

import asyncio
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

import shekel
from shekel import Budget, BudgetConfigError, BudgetExceededError, budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient

PRICES = {"input": 1.0, "output": 2.0}
MESSAGES = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens at the server


def cost(prompt: int, completion: int) -> Decimal:
    return Decimal("0.001") * prompt + Decimal("0.002") * completion


def chat(client: Any, model: str = "test/model", **kwargs: Any) -> Any:
    return client.chat_completion(MESSAGES, model=model, **kwargs)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_usd": -1}, "max_usd"),
        ({"max_usd": 0}, "max_usd"),
        ({"max_usd": math.nan}, "max_usd"),
        ({"max_usd": math.inf}, "max_usd"),
        ({"max_usd": "lots"}, "max_usd"),
        ({"max_usd": True}, "max_usd"),
        ({"max_usd": 1, "warn_at": 0}, "warn_at"),
        ({"max_usd": 1, "warn_at": 1.5}, "warn_at"),
        ({"warn_at": 0.5}, "warn_at"),
        ({"price_per_1k_tokens": {"input": -1, "output": 1}}, "negative"),
        ({"price_per_1k_tokens": {"input": math.nan, "output": 1}}, "finite"),
        ({"price_per_1k_tokens": {"input": 1, "output": 1, "cache": 1}}, "unknown key"),
        ({"price_per_1k_tokens": {"input": 1}}, "missing"),
        ({"price_per_1k_tokens": {"m": {"input": 1, "outptu": 1}}}, "unknown key"),
        ({"price_per_1k_tokens": {}}, "non-empty"),
        ({"max_usd": 1, "fallback": {"at_pct": 0.5}}, "model"),
        ({"max_usd": 1, "fallback": {"model": "x", "at_pct": 2}}, "at_pct"),
        ({"fallback": {"model": "x"}}, "max_usd"),
        ({"max_llm_calls": 0}, "max_llm_calls"),
        ({"max_llm_calls": 2.5}, "max_llm_calls"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_arguments_raise_a_clear_value_error_at_construction(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as info:
        budget(**kwargs)
    assert isinstance(info.value, BudgetConfigError)
    assert needle in str(info.value)


def test_prices_are_exact_decimals() -> None:
    b = budget(max_usd=0.1, price_per_1k_tokens={"input": 0.001, "output": 0.002})
    price = b.price_for("any")
    assert price is not None
    assert price.input_per_token == Decimal("0.000001") and price.output_per_token == Decimal("0.000002")
    assert b.limit == 0.1 and b.remaining == 0.1


# ------------------------------------------------------------------------------------------ nesting
def test_nested_spend_rolls_up_and_children_inherit_prices(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=5, name="pipeline", price_per_1k_tokens=PRICES) as total:
        with budget(max_usd=1, name="step-1") as step1:
            chat(client, max_tokens=4)
            assert shekel.current_budget() is step1
        with budget(name="step-2", price_per_1k_tokens={"input": 0, "output": 1}) as step2:
            chat(client, max_tokens=4)
        chat(client, max_tokens=2)
    assert step1.parent is total and step2.parent is total and total.children == [step1, step2]
    assert step1.spent_exact == cost(5, 4)
    assert step2.spent_exact == Decimal("0.004")
    assert total.spent_exact == cost(5, 4) + Decimal("0.004") + cost(5, 2)
    assert total.calls == 3 and total.to_dict()["own_spent_usd"] == str(cost(5, 2))
    summary = total.summary()
    assert "pipeline" in summary and "step-1" in summary and "test/model" in summary
    assert step1.path == "pipeline/step-1"


def test_a_child_without_a_cap_is_bounded_by_its_parent(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.02, name="parent", price_per_1k_tokens=PRICES):
        with budget(name="child"):
            with pytest.raises(BudgetExceededError) as info:
                chat(client, max_tokens=50)
    assert info.value.budget_name == "parent"
    assert server.request_count == 0


def test_per_model_prices_with_default(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    prices = {"big/model": {"input": 10, "output": 20}, "*": {"input": 1, "output": 2}}
    with budget(max_usd=10, price_per_1k_tokens=prices) as b:
        chat(client, model="big/model", max_tokens=1)
        chat(client, model="other/model", max_tokens=1)
    assert b.spent_exact == Decimal("0.010") * 5 + Decimal("0.020") + cost(5, 1)
    assert set(b.by_model) == {"big/model", "other/model"}


def test_reentering_under_another_budget_is_refused() -> None:
    a, b, c = budget(name="a"), budget(name="b"), budget(name="c")
    with a:
        with b:
            pass
    with c, pytest.raises(BudgetConfigError):
        b.__enter__()


def test_exiting_out_of_order_is_an_error() -> None:
    a, b = budget(name="a"), budget(name="b")
    a.__enter__()
    b.__enter__()
    with pytest.raises(RuntimeError):
        a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    a.__exit__(None, None, None)
    assert shekel.current_budget() is None


# ------------------------------------------------------------------------------------------ four uses
def test_decorators_run_each_call_in_a_fresh_budget(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    seen: list[Budget] = []

    @budget(max_usd=1, name="task", price_per_1k_tokens=PRICES)
    def task() -> float:
        current = shekel.current_budget()
        assert current is not None
        seen.append(current)
        chat(client, max_tokens=3)
        return current.spent

    assert task() == task() == float(cost(5, 3))
    assert seen[0] is not seen[1]


async def test_async_decorator_and_async_with(server: FakeInferenceServer, aclosing: Any) -> None:
    client = aclosing(huggingface_hub.AsyncInferenceClient(base_url=server.url))

    @budget(max_usd=1, price_per_1k_tokens=PRICES)
    async def task() -> Decimal:
        await client.chat_completion(MESSAGES, model="m", max_tokens=2)
        current = shekel.current_budget()
        assert current is not None
        return current.spent_exact

    async with budget(max_usd=1, price_per_1k_tokens=PRICES) as outer:
        results = await asyncio.gather(task(), task(), task())
    assert results == [cost(5, 2)] * 3
    assert outer.spent_exact == cost(5, 2) * 3


# ------------------------------------------------------------------------------------------ warn, fallback, calls
def test_warn_at_calls_on_warn_once(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    calls: list[tuple[float, float]] = []
    with budget(
        max_usd=1, price_per_1k_tokens=PRICES, warn_at=0.05, on_warn=lambda s, lim: calls.append((s, lim))
    ):
        for _ in range(6):
            chat(client, max_tokens=5)  # $0.015 each: the 4th call passes $0.05
    assert calls == [(float(cost(5, 5) * 4), 1.0)]


def test_warn_at_without_callback_emits_a_warning(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with pytest.warns(UserWarning, match="warn_at"):
        with budget(max_usd=1, price_per_1k_tokens=PRICES, warn_at=0.01):
            chat(client, max_tokens=5)


def test_fallback_switches_model_after_the_threshold(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(
        max_usd=0.1, price_per_1k_tokens=PRICES, fallback={"at_pct": 0.2, "model": "cheap/model"}
    ) as b:
        chat(client, model="big/model", max_tokens=5)  # $0.015
        chat(client, model="big/model", max_tokens=5)  # $0.030 in total: past 20%
        chat(client, model="big/model", max_tokens=5)
    sent = [r.body["model"] for r in server.requests]
    assert sent == ["big/model", "big/model", "cheap/model"]
    assert b.records[-1].fallback_from == "big/model" and b.records[-1].model == "cheap/model"


def test_max_llm_calls_stops_before_sending(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_llm_calls=2, name="two") as b:
        chat(client, max_tokens=1)
        chat(client, max_tokens=1)
        with pytest.raises(BudgetExceededError) as info:
            chat(client, max_tokens=1)
    assert info.value.reason == "calls" and "max_llm_calls" in str(info.value)
    assert server.request_count == 2 and b.calls == 2


# ------------------------------------------------------------------------------------------ threads
def test_plain_threads_carry_the_budget_with_carry(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(shekel.carry(lambda _: chat(client, max_tokens=2)), range(8)))
        thread = threading.Thread(target=shekel.carry(lambda: chat(client, max_tokens=2)))
        thread.start()
        thread.join()
    assert b.calls == 9 and b.spent_exact == cost(5, 2) * 9


def test_plain_threads_can_reenter_the_budget_object(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)

    def work(b: Budget) -> None:
        with b:
            chat(client, max_tokens=2)

    with budget(max_usd=1, name="outer", price_per_1k_tokens=PRICES) as outer:
        with budget(name="inner") as inner:
            threads = [threading.Thread(target=work, args=(inner,)) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert inner.calls == 3 and outer.spent_exact == cost(5, 2) * 3


def test_a_thread_without_carry_is_not_counted(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        thread = threading.Thread(target=lambda: chat(client, max_tokens=2))
        thread.start()
        thread.join()
    assert b.calls == 0  # documented: plain threads start with an empty context


# ------------------------------------------------------------------------------------------ the hard cap under load
def test_many_threads_never_pass_the_cap_and_money_adds_up(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    refused = 0
    lock = threading.Lock()

    def one(_: int) -> None:
        nonlocal refused
        try:
            chat(client, max_tokens=10)
        except BudgetExceededError:
            with lock:
                refused += 1

    with budget(max_usd=0.25, price_per_1k_tokens=PRICES) as b:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(shekel.carry(one), range(120)))
    assert b.spent_exact <= Decimal("0.25")
    assert b.spent_exact == cost(5, 10) * b.calls
    assert b.calls + refused == 120 and refused > 0
    assert server.request_count == b.calls and b.reserved == 0


async def test_many_tasks_never_pass_the_cap(server: FakeInferenceServer, aclosing: Any) -> None:
    client = aclosing(huggingface_hub.AsyncInferenceClient(base_url=server.url))

    async def one() -> bool:
        try:
            await client.chat_completion(MESSAGES, model="m", max_tokens=10)
            return True
        except BudgetExceededError:
            return False

    async with budget(max_usd=0.2, price_per_1k_tokens=PRICES) as b:
        results = await asyncio.gather(*(one() for _ in range(100)))
    assert b.spent_exact <= Decimal("0.2") and b.spent_exact == cost(5, 10) * sum(results)
    assert server.request_count == sum(results) and b.reserved == 0


async def test_executors_that_copy_the_context_are_counted(server: FakeInferenceServer) -> None:
    import contextvars

    client = InferenceClient(base_url=server.url)
    loop = asyncio.get_running_loop()
    async with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        await asyncio.to_thread(chat, client, max_tokens=2)
        ctx = contextvars.copy_context()
        await loop.run_in_executor(None, lambda: ctx.run(chat, client, max_tokens=2))
    assert b.calls == 2 and b.spent_exact == cost(5, 2) * 2


def test_decorated_generators_run_every_step_inside_a_fresh_budget(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    seen: list[Budget | None] = []

    @budget(max_usd=0.1, name="gen", price_per_1k_tokens=PRICES)
    def answers(n: int) -> Any:
        for _ in range(n):
            seen.append(shekel.current_budget())
            received = yield chat(client, max_tokens=5)
            assert received is None
        return "done"

    with budget(name="outer") as outer:
        with pytest.raises(BudgetExceededError):
            list(answers(100))  # $0.015 per call: the fresh $0.10 budget stops it
        assert shekel.current_budget() is outer
    assert seen[0] is not None and seen[0].name == "gen" and seen[0].parent is outer
    assert all(b is seen[0] for b in seen)
    assert 1 <= server.request_count < 100 and outer.spent_exact <= Decimal("0.1")


async def test_decorated_async_generators_run_every_step_inside_a_fresh_budget(
    server: FakeInferenceServer, aclosing: Any
) -> None:
    client = aclosing(huggingface_hub.AsyncInferenceClient(base_url=server.url))

    @budget(max_usd=1, name="agen", price_per_1k_tokens=PRICES)
    async def answers(n: int) -> Any:
        for _ in range(n):
            current = shekel.current_budget()
            assert current is not None and current.name == "agen"
            yield await client.chat_completion(MESSAGES, model="m", max_tokens=2)

    results = [r async for r in answers(3)]
    assert len(results) == 3 and shekel.current_budget() is None
    assert server.request_count == 3


def test_dollar_and_token_caps_together_choose_the_smaller_max_tokens(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(
        max_usd=1.0, max_total_tokens=1000, price_per_1k_tokens={"input": 0.001, "output": 0.001}
    ) as b:
        chat(client)  # no max_tokens: the dollars allow 4096 (the ceiling), the tokens fewer
    sent = server.requests[-1].body["max_tokens"]
    assert 1 <= sent <= 1000 - 5
    assert b.calls == 1 and b.input_tokens + b.output_tokens <= 1000
    with budget(max_usd=0.05, max_total_tokens=100_000, price_per_1k_tokens=PRICES):
        chat(client)  # here the dollars are the tighter cap
    assert server.requests[-1].body["max_tokens"] < 25


def test_a_refusal_names_the_money_held_by_calls_in_flight() -> None:
    b = budget(max_usd=0.25, name="shared", price_per_1k_tokens=PRICES)
    held = [b.reserve(model="m", prompt_tokens=10, max_tokens=30) for _ in range(3)]  # $0.074 each
    with pytest.raises(BudgetExceededError) as refused:
        b.reserve(model="m", prompt_tokens=10, max_tokens=30)
    message = str(refused.value)
    assert "held by calls in flight" in message and "$0.222 held" in message
    assert "$0.028 left" in message and "over the cap" in message
    assert refused.value.reserved == pytest.approx(0.222)
    for reservation in held:
        b.release(reservation)
    assert b.reserved == 0


def test_an_application_trapping_inexact_or_lowering_precision_gets_exact_money() -> None:
    import decimal

    with decimal.localcontext() as ctx:
        ctx.traps[decimal.Inexact] = True
        ctx.prec = 4
        b = budget(max_usd="1.23456789", price_per_1k_tokens={"input": 0.001, "output": 0.003})
        with b:
            reservation = b.reserve(model="m", prompt_tokens=77, max_tokens=None)  # divides: inexact
            b.settle(reservation, shekel.Usage(77, 1234), streamed=False, source="test")
        remaining = b.remaining
        assert "budget" in b.summary()
    assert b.spent_exact == Decimal("0.000001") * 77 + Decimal("0.000003") * 1234
    assert remaining == float(Decimal("1.23456789") - b.spent_exact)


@pytest.mark.parametrize("odd", ["²", "١٠", "-5", "1e3", 10.5, True, "", "abc", 2.5, 0, -1, "0"])
def test_a_max_tokens_shekel_cannot_read_is_refused_before_sending(
    server: FakeInferenceServer, odd: Any
) -> None:
    # Reserved for one value and sent as another would let a call pass the cap: refused, nothing held.
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        with pytest.raises(shekel.RequestError, match="max_tokens=") as refused:
            chat(client, max_tokens=odd)
    assert "not sent" in str(refused.value) and isinstance(refused.value, ValueError)
    assert server.request_count == 0 and b.reserved == 0 and b.calls_in_flight == 0 and b.failed_calls == 0


@pytest.mark.parametrize(("given", "sent"), [(1000.0, 1000), ("1000", 1000), (" 12 ", 12), (7, 7)])
def test_a_max_tokens_a_server_reads_as_a_whole_number_is_sent_as_that_number(
    server: FakeInferenceServer, given: Any, sent: int
) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=5, price_per_1k_tokens=PRICES):
        chat(client, max_tokens=given, n=float(1))
    assert server.requests[-1].body["max_tokens"] == sent and server.requests[-1].body["n"] == 1
