"""The local server speaks the OpenAI APIs: the real ``openai`` SDK, sync and async, over HTTP.

Counts: a prompt is its words + 3 per message (a string ``input`` and ``instructions`` are one message each);
the reply is the server's ``reply`` cut to the request's limit, one token per word.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from shekel.testing import DEFAULT_REPLY, FakeInferenceServer

openai = pytest.importorskip("openai")

REPLY_WORDS = len(DEFAULT_REPLY.split())
MESSAGES = [{"role": "user", "content": "hi there"}]  # 2 words + 3 = 5 prompt tokens


@pytest.fixture
def client(server: FakeInferenceServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server: FakeInferenceServer) -> Any:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


# ------------------------------------------------------------------------------- chat completions
def test_chat_completion_plain(client: Any, server: FakeInferenceServer) -> None:
    answer = client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=4)
    assert answer.choices[0].message.content == " ".join(DEFAULT_REPLY.split()[:4])
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        5,
        4,
        9,
    )
    assert server.requests[-1].route == "chat.completions"
    assert (server.requests[-1].input_tokens, server.requests[-1].output_tokens) == (5, 4)


def test_chat_completion_stream_with_usage(client: Any) -> None:
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert text == " ".join(DEFAULT_REPLY.split()[:3])
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 3)


def test_chat_usage_reports_cached_prompt_tokens_when_scripted(
    client: Any, server: FakeInferenceServer
) -> None:
    server.openai_cached_tokens = 4
    answer = client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=1)
    assert answer.usage.prompt_tokens_details.cached_tokens == 4


# ------------------------------------------------------------------------------------- responses
def test_responses_plain_string_input(client: Any, server: FakeInferenceServer) -> None:
    response = client.responses.create(model="gpt-test", input="hello there world")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == DEFAULT_REPLY
    assert response.output[0].type == "message"
    assert response.output[0].content[0].type == "output_text"
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (6, REPLY_WORDS, 6 + REPLY_WORDS)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert server.requests[-1].path == "/v1/responses"
    assert server.requests[-1].route == "responses"


def test_responses_honour_max_output_tokens_and_say_incomplete(client: Any) -> None:
    response = client.responses.create(model="gpt-test", input="hi", max_output_tokens=5)
    assert response.output_text == " ".join(DEFAULT_REPLY.split()[:5])
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 5
    assert response.usage.output_tokens == 5


def test_responses_list_input_and_instructions(client: Any) -> None:
    response = client.responses.create(
        model="gpt-test",
        instructions="be brief",  # 2 + 3
        input=[
            {"role": "user", "content": "one two three"},  # 3 + 3
            {"role": "assistant", "content": [{"type": "output_text", "text": "four"}]},  # 1 + 3
            {"role": "user", "content": [{"type": "input_text", "text": "five six"}]},  # 2 + 3
        ],
        max_output_tokens=2,
    )
    assert response.usage.input_tokens == 5 + 6 + 4 + 5
    assert response.usage.output_tokens == 2


def test_responses_scripted_cache_and_reasoning_tokens(client: Any, server: FakeInferenceServer) -> None:
    server.openai_cached_tokens = 3
    server.openai_reasoning_tokens = 7
    response = client.responses.create(model="gpt-test", input="one two three four", max_output_tokens=2)
    usage = response.usage
    assert usage.input_tokens == 7
    assert usage.input_tokens_details.cached_tokens == 3
    assert usage.output_tokens_details.reasoning_tokens == 7
    assert usage.output_tokens == 2 + 7
    assert usage.total_tokens == 7 + 9


def test_responses_stream_is_the_real_event_sequence(client: Any) -> None:
    events = list(client.responses.create(model="gpt-test", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4 : 4 + REPLY_WORDS] == ["response.output_text.delta"] * REPLY_WORDS
    assert types[4 + REPLY_WORDS :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == DEFAULT_REPLY
    assert events[0].response.status == "in_progress"
    assert events[0].response.usage is None
    completed = events[-1].response
    assert completed.output_text == DEFAULT_REPLY
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (4, REPLY_WORDS)
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {completed.output[0].id}


def test_responses_stream_cut_by_max_output_tokens_ends_incomplete(client: Any) -> None:
    events = list(client.responses.create(model="gpt-test", input="hi", stream=True, max_output_tokens=3))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage.output_tokens == 3
    assert events[-2].item.status == "incomplete"


def test_responses_stream_helper(client: Any) -> None:
    with client.responses.stream(model="gpt-test", input="hello there") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == DEFAULT_REPLY == final.output_text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, REPLY_WORDS)


def test_responses_with_raw_response(client: Any, server: FakeInferenceServer) -> None:
    server.headers = {"x-request-id": "req-test"}
    raw = client.responses.with_raw_response.create(model="gpt-test", input="hi", max_output_tokens=1)
    assert raw.headers["x-request-id"] == "req-test"
    assert raw.parse().usage.output_tokens == 1
    assert json.loads(raw.text)["usage"]["total_tokens"] == 5


async def test_async_responses_plain_and_stream(aclient: Any) -> None:
    response = await aclient.responses.create(model="gpt-test", input="hi", max_output_tokens=2)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 2)
    stream = await aclient.responses.create(model="gpt-test", input="hi", max_output_tokens=2, stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.incomplete"
    async with aclient.responses.stream(model="gpt-test", input="hi") as helper:
        final = await helper.get_final_response()
    assert final.usage.output_tokens == REPLY_WORDS


async def test_async_chat_stream(aclient: Any) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-test", messages=MESSAGES, max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 2


# ------------------------------------------------------------------------------------ embeddings
def test_embeddings_sdk_asks_for_base64_and_decodes_it(client: Any, server: FakeInferenceServer) -> None:
    result = client.embeddings.create(model="text-embedding-test", input=["one two", "three"])
    assert server.requests[-1].body["encoding_format"] == "base64"  # the SDK's default, not ours
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (3, 3)
    assert result.model == "text-embedding-test"
    raw = client.embeddings.with_raw_response.create(model="e", input="one two")
    wire = json.loads(raw.text)["data"][0]["embedding"]
    assert isinstance(wire, str)
    assert list(struct.unpack("<8f", base64.b64decode(wire))) == result.data[0].embedding


def test_embeddings_float_format_matches_base64(client: Any) -> None:
    as_floats = client.embeddings.create(model="e", input="one two", encoding_format="float")
    as_base64 = client.embeddings.create(model="e", input="one two")
    assert as_floats.data[0].embedding == as_base64.data[0].embedding


def test_embeddings_dimensions_and_token_arrays(client: Any, server: FakeInferenceServer) -> None:
    wide = client.embeddings.create(model="e", input="x", dimensions=32)
    assert len(wide.data[0].embedding) == 32
    tokens = client.embeddings.create(model="e", input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2
    assert tokens.usage.prompt_tokens == 5
    one_array = client.embeddings.create(model="e", input=[7, 8, 9, 10])
    assert len(one_array.data) == 1
    assert one_array.usage.prompt_tokens == 4
    server.embedding_dim = 3
    assert len(client.embeddings.create(model="e", input="x").data[0].embedding) == 3


async def test_async_embeddings(aclient: Any) -> None:
    result = await aclient.embeddings.create(model="e", input="a b c")
    assert result.usage.prompt_tokens == 3
    assert len(result.data[0].embedding) == 8


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, "RateLimitError", "requests"),
        (500, "InternalServerError", "server_error"),
        (400, "BadRequestError", "invalid_request_error"),
    ],
)
def test_errors_have_openai_shape(
    client: Any, server: FakeInferenceServer, status: int, error: str, kind: str
) -> None:
    server.fail_next(status)
    with pytest.raises(getattr(openai, error)) as caught:
        client.responses.create(model="gpt-test", input="hi")
    assert caught.value.status_code == status
    assert caught.value.body["type"] == kind
    server.fail_next(status)
    with pytest.raises(getattr(openai, error)):
        client.embeddings.create(model="e", input="hi")
    assert server.requests[-1].input_tokens is None  # a scripted answer bills nothing
