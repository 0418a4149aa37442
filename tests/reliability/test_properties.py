"""Property-based tests of the ledger: random trees of nested budgets, random prices, random mixes of
successful, failing and streamed calls from threads and asyncio tasks.

Invariants after every run (``assert_ledger_consistent``): no budget's spend exceeds its limit; each budget's
spend is its own calls plus its children's; reservations and calls in flight return to zero; nothing is
negative. And while the run goes on, no budget ever holds more (spent plus reserved) than its limit.
Money is exact: every record costs exactly its tokens times its price, and 100,000 small charges add up to
the exact total, with no float drift.
"""

from __future__ import annotations

import asyncio
import decimal
import inspect
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shekel import Budget, BudgetExceededError, budget
from shekel._usage import Usage
from shekel.testing import FakeInferenceServer

from ._support import assert_ledger_consistent, walk

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient
HfHubHTTPError = huggingface_hub.errors.HfHubHTTPError

HAS_TOKEN_LIMIT = "max_total_tokens" in inspect.signature(budget).parameters

# ------------------------------------------------------------------------------------------ strategies
# Prices as users write them: floats, strings and Decimals, USD per 1k tokens, zero included.
amounts = st.one_of(
    st.decimals(min_value=0, max_value=1, places=4),  # most models cost well under $1 per 1k tokens
    st.decimals(min_value=0, max_value=60, places=7),
)
price_values = st.one_of(amounts.map(float), amounts.map(str), amounts)
flat_prices = st.fixed_dictionaries({"input": price_values, "output": price_values})
# Per model, always with a "*" default; "cheap" is the fallback model some budgets switch to.
prices = st.one_of(flat_prices, st.fixed_dictionaries({"*": flat_prices, "cheap": flat_prices}))
limits = st.one_of(st.none(), st.decimals(min_value=Decimal("0.0001"), max_value=20, places=4))


class WarnCounter:
    """An ``on_warn`` callback that counts its calls (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[float, float]] = []

    def __call__(self, spent: float, limit: float) -> None:
        with self.lock:
            self.calls.append((spent, limit))


def assert_warned_once(budgets: list[Budget]) -> None:
    """``on_warn`` fires exactly once for a budget whose spend reached ``warn_at``, never for the others."""
    for b in budgets:
        counter = b._config.get("on_warn")
        if isinstance(counter, WarnCounter):
            reached = b.spent_exact >= Decimal(repr(b._config["warn_at"])) * b.limit_exact
            assert len(counter.calls) == (1 if reached else 0), (b.path, counter.calls, b.spent_exact)


@dataclass
class Node:
    """A budget to build: its arguments and its children."""

    kwargs: dict[str, Any]
    children: list[Node] = field(default_factory=list)

    def flat(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.flat()


@st.composite
def trees(draw: Any, depth: int = 0, root: bool = True) -> Node:
    kwargs: dict[str, Any] = {"max_usd": draw(limits)}
    # The root is always priced so every call has a price; below it, a budget may set its own or inherit.
    if root or draw(st.booleans()):
        kwargs["price_per_1k_tokens"] = draw(prices)
    if kwargs["max_usd"] is not None and draw(st.integers(0, 3)) == 0:
        kwargs["fallback"] = {"at_pct": draw(st.sampled_from([0.1, 0.5, 0.9, 1])), "model": "cheap"}
    if draw(st.integers(0, 4)) == 0:
        kwargs["max_llm_calls"] = draw(st.integers(1, 6))
    if kwargs["max_usd"] is not None and draw(st.integers(0, 2)) == 0:
        kwargs["warn_at"] = draw(st.sampled_from([0.01, 0.3, 0.8, 1]))
        kwargs["on_warn"] = WarnCounter()
    if HAS_TOKEN_LIMIT and draw(st.integers(0, 4)) == 0:
        kwargs["max_total_tokens"] = draw(st.integers(1, 400))
    children = [] if depth >= 2 else draw(st.lists(trees(depth + 1, False), max_size=3))
    return Node(kwargs, children)


def build(node: Node, budgets: list[Budget]) -> Budget:
    """Create the budgets, attaching each child by entering it once inside its parent."""
    b = budget(name=f"b{len(budgets)}", **node.kwargs)
    budgets.append(b)
    with b:
        for child in node.children:
            build(child, budgets)
    return b


def _exact(value: Any) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def per_token(b: Budget, model: str | None = "m") -> tuple[Decimal, Decimal]:
    """The exact USD per token a call in ``b`` is charged: the nearest price up the chain, as written."""
    for owner in b._chain:
        table = owner._config["price_per_1k_tokens"]
        if table is not None:
            if "input" not in table:
                table = table["cheap"] if model == "cheap" else table["*"]
            return _exact(table["input"]) / 1000, _exact(table["output"]) / 1000
    raise AssertionError("the root is always priced")


def assert_records_exact(budgets: list[Budget]) -> None:
    for b in budgets:
        for record in b.records:
            price_in, price_out = per_token(b, record.model)
            assert record.cost == price_in * record.input_tokens + price_out * record.output_tokens


def assert_token_limits(budgets: list[Budget]) -> None:
    for b in budgets:
        limit = b._config.get("max_total_tokens")
        if limit is not None:
            assert b.input_tokens + b.output_tokens <= limit
        if b.max_llm_calls is not None:
            assert b.calls <= b.max_llm_calls


class Watch:
    """Checks, under the tree's lock, that no budget ever holds more than its limit while calls run."""

    def __init__(self, budgets: list[Budget]) -> None:
        self.budgets = budgets
        self.last_spent = {id(b): Decimal(0) for b in budgets}

    def check(self) -> None:
        with self.budgets[0]._lock:
            for b in self.budgets:
                account = b._account
                if account.limit is not None:
                    assert account.spent + account.reserved <= account.limit, f"{b.path} holds too much"
                assert account.reserved >= 0 and account.inflight >= 0
                assert account.spent >= self.last_spent[id(b)], f"{b.path}: spend went down"
                self.last_spent[id(b)] = account.spent


# ------------------------------------------------------------------------------------------ ledger, threads
ledger_ops = st.lists(
    st.tuples(
        st.integers(0, 30),  # which budget (modulo the tree size)
        st.sampled_from(["ok", "fail", "partial", "over_ask"]),
        st.integers(0, 300),  # prompt tokens reserved (an upper bound)
        st.one_of(st.none(), st.integers(1, 300)),  # max_tokens asked for
        st.floats(0, 1),  # share of the bound the server reports
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), ops=ledger_ops, threads=st.integers(1, 6))
def test_ledger_invariants_hold_under_concurrent_calls(
    tree: Node, ops: list[tuple[Any, ...]], threads: int
) -> None:
    budgets: list[Budget] = []
    build(tree, budgets)
    watch = Watch(budgets)
    refused: list[BudgetExceededError] = []
    settled: list[int] = []

    def run(op: tuple[Any, ...]) -> None:
        index, kind, prompt, max_tokens, share = op
        b = budgets[index % len(budgets)]
        try:
            reservation = b.reserve(model="m", prompt_tokens=prompt, max_tokens=max_tokens)
        except BudgetExceededError as exc:
            refused.append(exc)
            watch.check()
            return
        watch.check()
        granted = reservation.max_tokens if reservation.max_tokens is not None else 50
        if kind == "fail":
            b.release(reservation)
        else:
            settled.append(1)
            out = int(granted * share) if kind != "over_ask" else granted + 2  # a provider one or two over
            inp = int(prompt * share) if kind == "partial" else prompt
            b.settle(
                reservation,
                Usage(inp, out, estimated=kind == "partial"),
                streamed=kind == "partial",
                source="t",
            )
        watch.check()

    start = threading.Barrier(threads)

    def worker(mine: list[tuple[Any, ...]]) -> None:
        start.wait()
        for op in mine:
            run(op)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workers = [threading.Thread(target=worker, args=(ops[i::threads],)) for i in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()

    assert_ledger_consistent(budgets[0])
    assert_records_exact(budgets)
    assert_token_limits(budgets)
    assert_warned_once(budgets)
    assert budgets[0].calls == len(settled)
    for exc in refused:
        assert exc.reason in ("usd", "calls", "tokens")


# ------------------------------------------------------------------------------------------ real HTTP
CALL_KINDS = ["ok", "ok_auto", "stream", "stream_auto", "fail", "broken_stream", "abandoned_stream"]

calls = st.lists(
    st.tuples(
        st.integers(0, 30),
        st.sampled_from(CALL_KINDS),
        st.integers(1, 30),  # max_tokens
        st.integers(1, 12),  # prompt words
    ),
    min_size=1,
    max_size=12,
)


@dataclass
class Servers:
    ok: FakeInferenceServer
    failing: FakeInferenceServer
    dropping: FakeInferenceServer

    def arm(self, plan: list[tuple[Any, ...]], stream_usage: str, extra: int = 0, usage: bool = True) -> None:
        for server in (self.ok, self.failing, self.dropping):
            server.reset()
        self.ok.stream_usage = stream_usage  # type: ignore[assignment]
        self.ok.extra_completion_tokens = extra  # providers that report one or two tokens past max_tokens
        self.ok.usage = usage
        self.failing.fail_next(503, times=len(plan))
        for _ in plan:
            self.dropping.drop_stream_after(3)

    def url(self, kind: str) -> str:
        if kind == "fail":
            return self.failing.url
        if kind == "broken_stream":
            return self.dropping.url
        return self.ok.url

    def requests(self) -> int:
        return self.ok.request_count + self.failing.request_count + self.dropping.request_count


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with FakeInferenceServer() as ok, FakeInferenceServer() as failing, FakeInferenceServer() as dropping:
        yield Servers(ok, failing, dropping)


def _messages(words: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(["word"] * words)}]


class Tally:
    """What the callers saw, to reconcile with the ledger and the servers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered = 0  # calls that reached the server and returned or streamed something
        self.failed = 0  # calls the server refused (HTTP 503)
        self.broken = 0  # streams whose connection dropped before the answer ended
        self.refused = 0  # calls shekel refused before sending

    def add(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)


def _check_run(budgets: list[Budget], tally: Tally, servers: Servers) -> None:
    assert_ledger_consistent(budgets[0])
    assert_records_exact(budgets)
    assert_token_limits(budgets)
    assert_warned_once(budgets)
    # Every call that was sent and answered is counted once, every failed one as failed; refused calls never
    # reach a server.
    assert budgets[0].calls == tally.delivered
    assert budgets[0].failed_calls == tally.failed + tally.broken
    assert servers.requests() == tally.delivered + tally.failed + tally.broken


def _sync_call(b: Budget, kind: str, max_tokens: int, words: int, servers: Servers, tally: Tally) -> None:
    client = InferenceClient(base_url=servers.url(kind))
    stream = kind in ("stream", "stream_auto", "broken_stream", "abandoned_stream")
    limit = {} if kind.endswith("_auto") else {"max_tokens": max_tokens}  # _auto: shekel picks max_tokens
    with b:
        try:
            result = client.chat_completion(_messages(words), stream=stream, **limit)
        except BudgetExceededError:
            tally.add("refused")
            return
        except HfHubHTTPError:
            assert kind == "fail"
            tally.add("failed")
            return
        assert kind != "fail"
        if kind == "abandoned_stream":
            next(iter(result), None)
            del result
        elif stream:
            try:
                for _ in result:
                    pass
            except Exception:
                assert kind == "broken_stream"
                tally.add("broken")
                return
        tally.add("delivered")


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    tree=trees(),
    plan=calls,
    threads=st.integers(1, 4),
    stream_usage=st.sampled_from(["requested", "never", "final", "cumulative", "always"]),
    extra=st.integers(0, 2),
    usage=st.booleans(),
)
def test_real_calls_from_threads_keep_every_invariant(
    servers: Servers,
    tree: Node,
    plan: list[tuple[Any, ...]],
    threads: int,
    stream_usage: str,
    extra: int,
    usage: bool,
) -> None:
    budgets: list[Budget] = []
    build(tree, budgets)
    servers.arm(plan, stream_usage, extra, usage)
    tally = Tally()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(threads) as pool:
            futures = [
                pool.submit(_sync_call, budgets[i % len(budgets)], kind, mt, words, servers, tally)
                for i, kind, mt, words in plan
            ]
            for f in futures:
                f.result()
    _check_run(budgets, tally, servers)


async def _async_call(
    b: Budget, kind: str, max_tokens: int, words: int, servers: Servers, tally: Tally
) -> None:
    client = AsyncInferenceClient(base_url=servers.url(kind))
    stream = kind in ("stream", "stream_auto", "broken_stream", "abandoned_stream")
    limit = {} if kind.endswith("_auto") else {"max_tokens": max_tokens}
    try:
        async with b:
            try:
                result = await client.chat_completion(_messages(words), stream=stream, **limit)
            except BudgetExceededError:
                tally.add("refused")
                return
            except HfHubHTTPError:
                assert kind == "fail"
                tally.add("failed")
                return
            assert kind != "fail"
            if kind == "abandoned_stream":
                await result.__anext__()
                await result.aclose()
            elif stream:
                try:
                    async for _ in result:
                        pass
                except Exception:
                    assert kind == "broken_stream"
                    tally.add("broken")
                    return
            tally.add("delivered")
    finally:
        await client.close()


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    tree=trees(),
    plan=calls,
    stream_usage=st.sampled_from(["requested", "never", "final", "cumulative", "always"]),
    extra=st.integers(0, 2),
    usage=st.booleans(),
)
def test_real_calls_from_asyncio_tasks_keep_every_invariant(
    servers: Servers, tree: Node, plan: list[tuple[Any, ...]], stream_usage: str, extra: int, usage: bool
) -> None:
    budgets: list[Budget] = []
    build(tree, budgets)
    servers.arm(plan, stream_usage, extra, usage)
    tally = Tally()

    async def main() -> None:
        await asyncio.gather(
            *(
                _async_call(budgets[i % len(budgets)], kind, mt, words, servers, tally)
                for i, kind, mt, words in plan
            )
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asyncio.run(main())
    _check_run(budgets, tally, servers)


# ------------------------------------------------------------------------------------------ exact money
def test_one_hundred_thousand_small_charges_add_up_exactly() -> None:
    """$0.0001 and $0.0003 per 1k tokens: each call costs $0.0000004, which no binary float holds exactly."""
    n = 100_000
    root = budget(max_usd=1, price_per_1k_tokens={"input": 0.0001, "output": 0.0003}, name="root")
    mid = budget(max_usd=Decimal("0.5"), name="mid")
    leaf = budget(max_usd="0.25", name="leaf")
    with root, mid, leaf:
        for i in range(n):
            b = (leaf, mid, root)[i % 3]
            reservation = b.reserve(model="m", prompt_tokens=1, max_tokens=1)
            b.settle(reservation, Usage(1, 1), streamed=False, source="t")
    per_call = Decimal("0.0000004")
    assert root.spent_exact == per_call * n == Decimal("0.04")
    assert leaf.spent_exact == per_call * len(range(0, n, 3))
    assert mid.spent_exact == per_call * (len(range(0, n, 3)) + len(range(1, n, 3)))
    assert root.spent == 0.04 and float(root.spent_exact) == 0.04
    assert_ledger_consistent(root)
    # The same sum in floats drifts: the test is sensitive to the drift it rules out.
    drift = 0.0
    for _ in range(n):
        drift += 0.0001 / 1000 + 0.0003 / 1000
    assert drift != 0.04


@settings(max_examples=200, deadline=None)
@given(
    price=prices,
    usages=st.lists(
        st.tuples(st.integers(0, 10_000_000), st.integers(0, 10_000_000)), min_size=1, max_size=20
    ),
)
def test_every_charge_is_exactly_tokens_times_the_price_as_written(
    price: dict[str, Any], usages: list[tuple[int, int]]
) -> None:
    b = budget(price_per_1k_tokens=price)
    price_in, price_out = per_token(b)
    expected = Decimal(0)
    with b:
        for inp, out in usages:
            reservation = b.reserve(model="m", prompt_tokens=inp, max_tokens=out)
            cost = b.settle(reservation, Usage(inp, out), streamed=False, source="t")
            assert cost == price_in * inp + price_out * out
            expected += cost
    assert b.spent_exact == expected
    assert_ledger_consistent(b)
    assert all(x.spent_exact >= 0 for x in walk(b))


def test_money_is_exact_whatever_the_callers_decimal_context() -> None:
    with decimal.localcontext() as ctx:
        ctx.prec = 6
        b = budget(price_per_1k_tokens={"input": "0.000123457", "output": "0"})  # 9 places: the finest
        with b:
            reservation = b.reserve(model="m", prompt_tokens=1_234_567, max_tokens=1)
            b.settle(reservation, Usage(1_234_567, 0), streamed=False, source="t")
    with decimal.localcontext(decimal.Context(prec=50)):
        assert b.spent_exact == Decimal("0.000123457") / 1000 * 1_234_567


# ------------------------------------------------------------------------------------------ usage and estimates
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
counts_json = st.one_of(json_values, st.integers(0, 20_000_000))


@settings(max_examples=500, deadline=None)
@given(
    prompt=counts_json,
    completion=counts_json,
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    usage_itself=st.one_of(st.none(), json_values),
)
def test_read_usage_returns_sane_counts_or_nothing(
    prompt: Any, completion: Any, extra: dict[str, Any], usage_itself: Any
) -> None:
    from shekel._usage import read_usage

    for container in (
        {"usage": {**extra, "prompt_tokens": prompt, "completion_tokens": completion}},
        {"usage": usage_itself},
    ):
        usage = read_usage(container)
        if usage is not None:
            assert type(usage.input_tokens) is int and type(usage.output_tokens) is int
            assert 0 <= usage.input_tokens <= 10_000_000 and 0 <= usage.output_tokens <= 10_000_000


message_text = st.text(max_size=200)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant"]),
            "content": st.one_of(
                message_text,
                st.lists(
                    st.one_of(
                        st.fixed_dictionaries({"type": st.just("text"), "text": message_text}),
                        st.fixed_dictionaries(
                            {
                                "type": st.just("image_url"),
                                "image_url": st.fixed_dictionaries({"url": st.text()}),
                            }
                        ),
                    ),
                    max_size=3,
                ),
            ),
        }
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(messages=messages)
def test_the_prompt_reserved_for_is_never_below_the_prompt_charged_on_an_estimate(
    messages: list[dict[str, Any]],
) -> None:
    """When the server reports no usage shekel charges its fair estimate; the high estimate it reserved must
    cover it, or an estimated charge could pass the cap."""
    from shekel._usage import prompt_tokens_fair, prompt_tokens_high

    assert prompt_tokens_high(messages) >= prompt_tokens_fair(messages) >= 0
