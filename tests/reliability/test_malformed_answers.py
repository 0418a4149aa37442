"""Nothing shekel does after the request may change what the caller gets, or leave a hold behind.

Fuzzed answers with every JSON type where the content, the deltas, the usage and the choices go, through
the real ``InferenceClient`` against the local server: the caller sees exactly what it sees without shekel
(the same result or the same error), and the budget is left with nothing reserved and nothing in flight.
An answer shekel cannot read is charged what the call held.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shekel
from shekel import budget
from shekel.testing import FakeInferenceServer

from ._support import assert_ledger_consistent, error_form, plain

huggingface_hub = pytest.importorskip("huggingface_hub")
InferenceClient = huggingface_hub.InferenceClient

PRICES = {"input": 1.0, "output": 2.0}
MESSAGES = [{"role": "user", "content": "hello there"}]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
usages = json_values | st.fixed_dictionaries(
    {"prompt_tokens": json_values, "completion_tokens": json_values, "total_tokens": json_values}
)


def _chat_body(content: Any, usage: Any, choices: Any) -> str:
    body: dict[str, Any] = {
        "object": "chat.completion",
        "id": "x",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": choices
        if choices is not None
        else [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage,
    }
    return json.dumps(body)


def _stream_body(delta: Any, usage: Any) -> str:
    chunks = [
        {
            "object": "chat.completion.chunk",
            "id": "x",
            "created": 1,
            "model": "m",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            "usage": None,
        },
        {
            "object": "chat.completion.chunk",
            "id": "x",
            "created": 1,
            "model": "m",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "delta": {"content": " end"}, "finish_reason": "stop"}],
            "usage": usage,
        },
    ]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def _outcome(client: Any, stream: bool) -> tuple[Any, ...]:
    try:
        if not stream:
            return ("result", plain(client.chat_completion(MESSAGES, model="m", max_tokens=5)))
        chunks = []
        for chunk in client.chat_completion(MESSAGES, model="m", max_tokens=5, stream=True):
            chunks.append(plain(chunk))
        return ("stream", chunks)
    except Exception as exc:
        return ("error", error_form(exc))


def _compare(server: FakeInferenceServer, body: str, *, stream: bool) -> None:
    content_type = "text/event-stream" if stream else "application/json"
    shekel.uninstall()
    # Closing the client closes the streams a parse error left half read: finalised later by the collector,
    # inside the pool's next request, they would re-take its lock and hang the run (encode/httpcore#996).
    with InferenceClient(base_url=server.url) as client:
        server.respond_next(body, content_type=content_type)
        baseline = _outcome(client, stream)
    with (
        InferenceClient(base_url=server.url) as client,
        budget(max_usd=1, max_llm_calls=50, price_per_1k_tokens=PRICES) as b,
    ):
        server.respond_next(body, content_type=content_type)
        counted = _outcome(client, stream)
    assert counted == baseline
    assert b.calls_in_flight == 0 and b.reserved == 0
    (record,) = b.records
    if b.spent_exact > 1:  # over-reported usage is charged as reported (it is what is billed), and flagged
        assert any("reported" in note for note in record.notes), record
    else:
        assert_ledger_consistent(b)
    if counted[0] == "error":
        assert record.outcome == "unknown" and record.cost > 0  # the request left: charged what it held


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=json_values, usage=usages, choices=st.none() | json_values)
def test_fuzzed_chat_answers_pass_through_and_leave_no_hold(
    server: FakeInferenceServer, content: Any, usage: Any, choices: Any
) -> None:
    _compare(server, _chat_body(content, usage, choices), stream=False)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(delta=json_values, usage=usages)
def test_fuzzed_stream_chunks_pass_through_and_leave_no_hold(
    server: FakeInferenceServer, delta: Any, usage: Any
) -> None:
    _compare(server, _stream_body(delta, usage), stream=True)


@pytest.mark.parametrize("content", [42, 1.5, ["a"], {"x": 1}, True])
def test_a_content_of_the_wrong_type_is_passed_on_and_charged_the_hold(
    server: FakeInferenceServer, content: Any
) -> None:
    """The first review's case: an int ``content`` made settling raise TypeError, the caller lost the answer
    and the hold (with its call slot) leaked, so later healthy calls were refused."""
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=0.30, max_llm_calls=2, price_per_1k_tokens=PRICES) as b:
        server.respond_next(_chat_body(content, None, None))
        answer = client.chat_completion(MESSAGES, model="m", max_tokens=5)
        assert answer.choices[0].message.content == content
        client.chat_completion(MESSAGES, model="m", max_tokens=5)  # the slot was given back
    assert b.reserved == 0 and b.calls_in_flight == 0 and b.calls == 2
    first = b.records[0]
    assert first.outcome == "ok" and first.estimated and "could not be read" in first.notes[-1]
    assert first.output_tokens == 5 + 2  # what it held: max_tokens and the margin


def test_a_generated_text_that_is_a_number_is_passed_on(server: FakeInferenceServer) -> None:
    client = InferenceClient(model=server.url)
    with budget(max_usd=1, max_llm_calls=2, price_per_1k_tokens=PRICES) as b:
        server.respond_next(json.dumps([{"generated_text": 12345, "details": {"generated_tokens": "many"}}]))
        got = client.text_generation("hello world", max_new_tokens=5)
        client.text_generation("hello world", max_new_tokens=5)
    assert got == 12345
    assert b.reserved == 0 and b.calls_in_flight == 0 and b.calls == 2


def test_a_stream_chunk_whose_delta_is_a_string_does_not_end_the_stream(server: FakeInferenceServer) -> None:
    client = InferenceClient(base_url=server.url)
    with budget(max_usd=1, price_per_1k_tokens=PRICES) as b:
        server.respond_next(_stream_body("not a delta", None), content_type="text/event-stream")
        chunks = list(client.chat_completion(MESSAGES, model="m", max_tokens=5, stream=True))
    assert len(chunks) == 2 and chunks[-1].choices[0].delta.content == " end"
    assert b.reserved == 0 and b.calls_in_flight == 0 and len(b.records) == 1
