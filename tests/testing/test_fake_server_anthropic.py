"""The local server speaks Anthropic's Messages API: the real ``anthropic`` SDK, sync and async, over HTTP.

Counts: words + 3 per message, the ``system`` prompt one more message; ``input_tokens`` excludes the tokens
the server is told were read from or written to the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shekel.testing import DEFAULT_REPLY, FakeInferenceServer

anthropic = pytest.importorskip("anthropic")

REPLY_WORDS = len(DEFAULT_REPLY.split())
MESSAGES = [{"role": "user", "content": "hi there"}]  # 2 words + 3 = 5 input tokens
MODEL = "claude-test"


@pytest.fixture
def client(server: FakeInferenceServer) -> Iterator[Any]:
    with anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server: FakeInferenceServer) -> Any:
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


def test_create_plain(client: Any, server: FakeInferenceServer) -> None:
    message = client.messages.create(model=MODEL, max_tokens=4, messages=MESSAGES, system="be brief")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.content[0].type == "text"
    assert message.content[0].text == " ".join(DEFAULT_REPLY.split()[:4])
    assert message.stop_reason == "max_tokens"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (5 + 5, 4)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    assert server.requests[-1].path == "/v1/messages"
    assert "anthropic-version" in server.requests[-1].headers
    assert (server.requests[-1].input_tokens, server.requests[-1].output_tokens) == (10, 4)


def test_a_whole_reply_ends_the_turn(client: Any) -> None:
    message = client.messages.create(model=MODEL, max_tokens=1000, messages=MESSAGES)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == REPLY_WORDS
    assert message.content[0].text == DEFAULT_REPLY


def test_system_as_blocks_and_content_as_blocks(client: Any) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=1,
        system=[{"type": "text", "text": "one two three"}],  # 3 + 3
        messages=[{"role": "user", "content": [{"type": "text", "text": "four five"}]}],  # 2 + 3
    )
    assert message.usage.input_tokens == 11


def test_cache_tokens_are_scripted_and_leave_input_tokens(client: Any, server: FakeInferenceServer) -> None:
    server.anthropic_cache_read = 3
    server.anthropic_cache_write = 4
    messages = [{"role": "user", "content": "one two three four five six seven"}]  # 7 + 3 = 10
    message = client.messages.create(model=MODEL, max_tokens=2, messages=messages)
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (3, 3, 4)
    assert usage.cache_creation.ephemeral_5m_input_tokens == 4
    with client.messages.stream(model=MODEL, max_tokens=2, messages=messages) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (3, 3)
    assert final.usage.cache_creation_input_tokens == 4


def test_create_stream_is_the_real_event_sequence(client: Any) -> None:
    events = list(client.messages.create(model=MODEL, max_tokens=3, messages=MESSAGES, stream=True))
    # The SDK drops ``ping`` events; the wire has one after content_block_start (checked below).
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0].message
    assert (start.usage.input_tokens, start.usage.output_tokens) == (5, 1)
    assert start.content == []
    assert start.stop_reason is None
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == " ".join(
        DEFAULT_REPLY.split()[:3]
    )
    assert all(e.delta.type == "text_delta" for e in events if e.type == "content_block_delta")
    assert events[6].delta.stop_reason == "max_tokens"
    assert events[6].usage.output_tokens == 3


def test_stream_wire_has_event_lines_and_a_ping(server: FakeInferenceServer) -> None:
    body = {"model": MODEL, "max_tokens": 2, "messages": MESSAGES, "stream": True}
    with httpx.Client() as http:
        text = http.post(server.url + "/v1/messages", json=body).text
    names = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]


def test_stream_helper(client: Any) -> None:
    with client.messages.stream(model=MODEL, max_tokens=1000, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT_REPLY
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, REPLY_WORDS)
    assert final.stop_reason == "end_turn"


def test_count_tokens(client: Any, server: FakeInferenceServer) -> None:
    server.anthropic_cache_read = 2  # counting tokens knows nothing of the cache
    count = client.messages.count_tokens(model=MODEL, messages=MESSAGES, system="be brief")
    assert count.input_tokens == 10
    assert server.requests[-1].route == "messages.count_tokens"


def test_max_tokens_is_required_as_anthropic_says(server: FakeInferenceServer) -> None:
    with httpx.Client() as http:
        answer = http.post(server.url + "/v1/messages", json={"model": MODEL, "messages": MESSAGES})
    assert answer.status_code == 400
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, "RateLimitError", "rate_limit_error"),
        (500, "InternalServerError", "api_error"),
        (529, "OverloadedError", "overloaded_error"),
    ],
)
def test_errors_have_anthropic_shape(
    client: Any, server: FakeInferenceServer, status: int, error: str, kind: str
) -> None:
    server.fail_next(status)
    with pytest.raises(getattr(anthropic, error)) as caught:
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert caught.value.status_code == status
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == kind
    server.fail_next(status)
    with (
        pytest.raises(getattr(anthropic, error)),
        client.messages.stream(model=MODEL, max_tokens=5, messages=MESSAGES),
    ):
        pass


def test_a_given_error_body_is_sent_as_is(client: Any, server: FakeInferenceServer) -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    server.fail_next(529, body)
    with pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert caught.value.body == body


def test_with_raw_response_has_the_request_id(client: Any) -> None:
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=2, messages=MESSAGES)
    assert raw.headers["request-id"].startswith("req_")
    assert json.loads(raw.http_response.text)["usage"]["output_tokens"] == 2
    assert raw.parse().usage.output_tokens == 2


async def test_async_create_plain_and_stream(aclient: Any) -> None:
    message = await aclient.messages.create(model=MODEL, max_tokens=2, messages=MESSAGES)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 2)
    stream = await aclient.messages.create(model=MODEL, max_tokens=2, messages=MESSAGES, stream=True)
    events = [e async for e in stream]
    assert events[-2].usage.output_tokens == 2


async def test_async_stream_helper_and_count_tokens(aclient: Any) -> None:
    async with aclient.messages.stream(model=MODEL, max_tokens=3, messages=MESSAGES) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == " ".join(DEFAULT_REPLY.split()[:3])
    assert final.usage.output_tokens == 3
    count = await aclient.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert count.input_tokens == 5


async def test_async_overloaded(aclient: Any, server: FakeInferenceServer) -> None:
    server.fail_next(529)
    with pytest.raises(anthropic.OverloadedError):
        await aclient.messages.create(model=MODEL, max_tokens=2, messages=MESSAGES)
