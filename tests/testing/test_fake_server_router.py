"""The router and the providers' own hosts answered locally: real SDKs aimed at https://... land on the server.

``server.transport()`` rewrites scheme, host and port and keeps the path; ``server.route_huggingface_hub()``
makes huggingface_hub's own clients use it, Hub look-ups included.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import httpx
import pytest

from shekel import budget
from shekel.testing import FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
from huggingface_hub.utils import _http as hf_http  # noqa: E402 - after the skip

InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient
ROUTER = "https://router.huggingface.co/v1"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens
ANY_PRICE = {"*": {"input": 1, "output": 2}}
# The Anthropic SDK 2.x is built on httpx2, a fork of httpx whose clients take only its own transports.
ANTHROPIC_HTTP = "httpx2" if hasattr(anthropic._base_client, "httpx2") else "httpx"


@pytest.fixture
def router() -> Iterator[FakeInferenceServer]:
    with FakeInferenceServer(router="hf-inference") as fake:
        yield fake


@pytest.fixture
def routed(router: FakeInferenceServer) -> Iterator[FakeInferenceServer]:
    with router.route_huggingface_hub():
        yield router


# ------------------------------------------------------------------------------------ the OpenAI SDK
def test_openai_sdk_at_the_router_lands_here_and_sees_the_provider(router: FakeInferenceServer) -> None:
    with openai.OpenAI(
        base_url=ROUTER,
        api_key="hf_test",
        http_client=httpx.Client(transport=router.transport()),
        max_retries=0,
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=f"{LLAMA}:together", messages=MESSAGES, max_tokens=3
        )
    completion = raw.parse()
    assert raw.headers["x-inference-provider"] == "together"
    assert (
        completion.model == LLAMA
    )  # the ``:provider`` suffix is the router's business, not the model's name
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 3)
    request = router.requests[-1]
    assert request.path == "/v1/chat/completions"
    assert request.headers["host"] == "router.huggingface.co"
    assert request.headers["authorization"] == "Bearer hf_test"
    assert request.body["model"] == f"{LLAMA}:together"
    assert str(raw.http_request.url) == "https://router.huggingface.co/v1/chat/completions"


def test_auto_routing_names_the_routers_provider_and_headers_still_win(router: FakeInferenceServer) -> None:
    with openai.OpenAI(
        base_url=ROUTER,
        api_key="hf_test",
        http_client=httpx.Client(transport=router.transport()),
        max_retries=0,
    ) as client:
        auto = client.chat.completions.with_raw_response.create(model=f"{LLAMA}:fastest", messages=MESSAGES)
        assert auto.headers["x-inference-provider"] == "hf-inference"
        assert auto.parse().model == LLAMA
        router.headers = {"x-inference-provider": "novita"}
        named = client.chat.completions.with_raw_response.create(model=f"{LLAMA}:together", messages=MESSAGES)
        assert named.headers["x-inference-provider"] == "novita"


def test_without_router_mode_no_provider_header(server: FakeInferenceServer) -> None:
    with openai.OpenAI(
        base_url=ROUTER,
        api_key="hf_test",
        http_client=httpx.Client(transport=server.transport()),
        max_retries=0,
    ) as client:
        raw = client.chat.completions.with_raw_response.create(model=f"{LLAMA}:together", messages=MESSAGES)
    assert "x-inference-provider" not in raw.headers


def test_provider_path_on_the_router(router: FakeInferenceServer) -> None:
    with openai.OpenAI(
        base_url="https://router.huggingface.co/cerebras/v1",
        api_key="hf_test",
        http_client=httpx.Client(transport=router.transport()),
        max_retries=0,
    ) as client:
        raw = client.chat.completions.with_raw_response.create(model="llama-3.3-70b", messages=MESSAGES)
    assert raw.headers["x-inference-provider"] == "cerebras"
    assert router.requests[-1].path == "/cerebras/v1/chat/completions"


async def test_async_openai_sdk_at_the_router(router: FakeInferenceServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=ROUTER,
        api_key="hf_test",
        http_client=httpx.AsyncClient(transport=router.async_transport()),
        max_retries=0,
    ) as client:
        stream = await client.chat.completions.create(
            model=f"{LLAMA}:together",
            messages=MESSAGES,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 2
    assert router.requests[-1].headers["host"] == "router.huggingface.co"


def test_openai_and_anthropic_default_hosts_land_here(server: FakeInferenceServer) -> None:
    with openai.OpenAI(api_key="sk-test", http_client=httpx.Client(transport=server.transport())) as client:
        response = client.responses.create(model="gpt-test", input="hi", max_output_tokens=2)
    assert response.usage.output_tokens == 2
    assert server.requests[-1].headers["host"] == "api.openai.com"
    assert server.requests[-1].path == "/v1/responses"
    http = importlib.import_module(ANTHROPIC_HTTP)
    transport = server.transport(ANTHROPIC_HTTP)
    with anthropic.Anthropic(api_key="sk-ant", http_client=http.Client(transport=transport)) as client:
        message = client.messages.create(model="claude-test", max_tokens=2, messages=MESSAGES)
    assert message.usage.output_tokens == 2
    assert server.requests[-1].headers["host"] == "api.anthropic.com"


async def test_async_anthropic_default_host_lands_here(server: FakeInferenceServer) -> None:
    http = importlib.import_module(ANTHROPIC_HTTP)
    transport = server.async_transport(ANTHROPIC_HTTP)
    async with anthropic.AsyncAnthropic(
        api_key="sk-ant", http_client=http.AsyncClient(transport=transport)
    ) as client:
        async with client.messages.stream(model="claude-test", max_tokens=3, messages=MESSAGES) as stream:
            final = await stream.get_final_message()
    assert final.usage.output_tokens == 3
    assert server.requests[-1].headers["host"] == "api.anthropic.com"


# ------------------------------------------------------------------------------------ huggingface_hub
def test_route_huggingface_hub_installs_and_restores_the_client_factories(
    server: FakeInferenceServer,
) -> None:
    before = (hf_http._GLOBAL_CLIENT_FACTORY, hf_http._GLOBAL_ASYNC_CLIENT_FACTORY)
    with server.route_huggingface_hub():
        inside = (hf_http._GLOBAL_CLIENT_FACTORY, hf_http._GLOBAL_ASYNC_CLIENT_FACTORY)
        assert inside[0] is not before[0] and inside[1] is not before[1]
        session = huggingface_hub.get_session()
        assert (
            session.get("https://huggingface.co/api/models/org/some-model").json()["id"] == "org/some-model"
        )
    assert before == (hf_http._GLOBAL_CLIENT_FACTORY, hf_http._GLOBAL_ASYNC_CLIENT_FACTORY)
    assert session.is_closed


def test_a_factory_installed_inside_is_left_in_place(server: FakeInferenceServer) -> None:
    before = hf_http._GLOBAL_CLIENT_FACTORY

    def mine() -> httpx.Client:
        return httpx.Client()

    try:
        with server.route_huggingface_hub():
            huggingface_hub.set_client_factory(mine)
        assert hf_http._GLOBAL_CLIENT_FACTORY is mine
    finally:
        huggingface_hub.set_client_factory(before)


def test_inference_client_with_a_provider_lands_here(routed: FakeInferenceServer) -> None:
    client = InferenceClient(provider="together", api_key="hf_test")
    with budget(price_per_1k_tokens=ANY_PRICE) as b:
        answer = client.chat_completion(MESSAGES, model=LLAMA, max_tokens=3)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 3)
    lookup, call = routed.requests[-2:]
    assert lookup.route == "hub.model_info"
    assert lookup.headers["host"] == "huggingface.co"
    assert call.path == "/together/v1/chat/completions"
    assert call.headers["host"] == "router.huggingface.co"
    assert call.body["model"] == LLAMA
    assert b.records[-1].provider == "together"


def test_inference_client_auto_routing_reads_the_routers_header(routed: FakeInferenceServer) -> None:
    routed.router = "novita"
    client = InferenceClient(api_key="hf_test")
    with budget(price_per_1k_tokens=ANY_PRICE) as b:
        client.chat_completion(MESSAGES, model=LLAMA, max_tokens=2)
    assert routed.requests[-1].path == "/v1/chat/completions"
    assert routed.requests[-1].headers["host"] == "router.huggingface.co"
    assert b.records[-1].provider == "novita"  # only the answer header could have said so


async def test_async_inference_client_with_a_provider(routed: FakeInferenceServer) -> None:
    async with AsyncInferenceClient(provider="together", api_key="hf_test") as client:
        answer = await client.chat_completion(MESSAGES, model=LLAMA, max_tokens=2)
    assert answer.usage.completion_tokens == 2
    assert routed.requests[-1].path == "/together/v1/chat/completions"


def test_hf_inference_tasks_through_the_router(routed: FakeInferenceServer) -> None:
    routed.hub_models.update(
        {"test/embedder": "feature-extraction", "test/classifier": "text-classification"}
    )
    client = InferenceClient(provider="hf-inference", api_key="hf_test")
    vectors = client.feature_extraction("one two", model="test/embedder")
    assert vectors.shape == (1, 8)
    assert routed.requests[-1].path == "/hf-inference/models/test/embedder/pipeline/feature-extraction"
    assert routed.requests[-1].input_tokens == 2
    labels = client.text_classification("one two three", model="test/classifier")
    assert labels[0].label == "POSITIVE"
    assert routed.requests[-1].path == "/hf-inference/models/test/classifier"
    assert routed.requests[-1].route == "text-classification"


def test_video_tasks_through_a_provider(routed: FakeInferenceServer) -> None:
    routed.hub_models.update({"test/text-to-video": "text-to-video", "test/image-to-video": "image-to-video"})
    client = InferenceClient(provider="together", api_key="hf_test")
    video = client.text_to_video("a cat playing", model="test/text-to-video")
    assert video[4:8] == b"ftyp"
    job, download = routed.requests[-2:]
    assert job.path == "/together/v2/videos" and job.route == "videos" and job.input_tokens == 3
    assert download.route == "files" and download.path.endswith(".mp4")
    assert client.image_to_video(b"\x89PNG\r\n\x1a\n", model="test/image-to-video")[4:8] == b"ftyp"


def test_together_media_and_embeddings(routed: FakeInferenceServer) -> None:
    routed.hub_models.update(
        {
            "test/flux": "text-to-image",
            "test/tts": "text-to-speech",
            "test/together-embed": "feature-extraction",
        }
    )
    client = InferenceClient(provider="together", api_key="hf_test")
    image = client.text_to_image("a red cat", model="test/flux")
    assert image.format == "PNG"
    assert routed.requests[-1].path == "/together/v1/images/generations"
    assert routed.requests[-1].input_tokens == 3
    assert client.text_to_speech("hello there", model="test/tts")[:4] == b"RIFF"
    assert routed.requests[-1].path == "/together/v1/audio/speech"
    assert client.feature_extraction("one two three", model="test/together-embed").shape == (1, 8)
    assert routed.requests[-1].route == "embeddings"
    assert routed.requests[-1].input_tokens == 3


def test_tabular_regression_has_no_provider_in_huggingface_hub(routed: FakeInferenceServer) -> None:
    """Recorded so the day a provider serves it, its test gets written."""
    client = InferenceClient(model=routed.task_url("tabular-regression"), token="hf_test")
    with pytest.raises(ValueError, match="not supported for provider"):
        client.tabular_regression({"x": ["1"]})
