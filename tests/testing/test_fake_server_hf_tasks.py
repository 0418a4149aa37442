"""Every ``huggingface_hub.InferenceClient`` task against the local server, through the real client.

A client pointed at a URL posts every task to that URL, so each test points it at ``server.task_url(task)``.
Inputs count one token per word; images, audio and tables count none; text answers (summaries,
translations, captions, transcripts) count their words as output tokens.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shekel.testing import DEFAULT_REPLY, TASKS, FakeInferenceServer

huggingface_hub = pytest.importorskip("huggingface_hub")
np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

InferenceClient = huggingface_hub.InferenceClient
AsyncInferenceClient = huggingface_hub.AsyncInferenceClient
REPLY_WORDS = len(DEFAULT_REPLY.split())


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


PNG, WAV = _png(), _wav()
TABLE = {"name": ["Ada", "Grace"], "born": ["1815", "1906"]}


def _is_png(image: Any, size: tuple[int, int] = (8, 8)) -> bool:
    return isinstance(image, Image.Image) and image.format == "PNG" and image.size == size


# (task, the call, a check of what the client parsed, input tokens, output tokens)
CASES: list[tuple[str, Callable[[Any], Any], Callable[[Any], bool], int, int]] = [
    (
        "feature-extraction",
        lambda c: c.feature_extraction("one two three"),
        lambda r: r.shape == (1, 8) and r.dtype == np.float32,
        3,
        0,
    ),
    (
        "sentence-similarity",
        lambda c: c.sentence_similarity("a cat sat", ["a cat sat", "dogs bark"]),
        lambda r: r == [1.0, 0.0],
        3 + 3 + 2,
        0,
    ),
    (
        "summarization",
        lambda c: c.summarization("a long text to cut", generate_parameters={"max_new_tokens": 4}),
        lambda r: r.summary_text == " ".join(DEFAULT_REPLY.split()[:4]),
        5,
        4,
    ),
    (
        "translation",
        lambda c: c.translation("hello world", src_lang="en", tgt_lang="fr"),
        lambda r: r.translation_text == DEFAULT_REPLY,
        2,
        REPLY_WORDS,
    ),
    (
        "text-classification",
        lambda c: c.text_classification("what a day", top_k=1),
        lambda r: [(e.label, e.score) for e in r] == [("POSITIVE", 0.9)],
        3,
        0,
    ),
    (
        "token-classification",
        lambda c: c.token_classification("Ada Lovelace wrote programs"),
        lambda r: (
            [(e.word, e.start, e.end, e.entity_group) for e in r]
            == [("Ada", 0, 3, "MISC"), ("Lovelace", 4, 12, "MISC")]
        ),
        4,
        0,
    ),
    (
        "fill-mask",
        lambda c: c.fill_mask("The capital of France is [MASK] .", top_k=2),
        lambda r: (
            [e.token_str for e in r] == ["paris", "london"]
            and r[0].sequence == "The capital of France is paris ."
        ),
        7,
        0,
    ),
    (
        "question-answering",
        lambda c: c.question_answering(question="who wrote it", context="Ada wrote the first program"),
        lambda r: (r.answer, r.start, r.end) == ("Ada", 0, 3),
        3 + 5,
        0,
    ),
    (
        "zero-shot-classification",
        lambda c: c.zero_shot_classification("I love this", ["positive", "negative"]),
        lambda r: [e.label for e in r] == ["positive", "negative"],
        3,
        0,
    ),
    (
        "table-question-answering",
        lambda c: c.table_question_answering(TABLE, query="who came first"),
        lambda r: r.answer == "Ada" and r.coordinates == [[0, 0]] and r.cells == ["Ada"],
        3 + 2 + 4,  # the query, the column names and the cells
        0,
    ),
    (
        "tabular-classification",
        lambda c: c.tabular_classification(TABLE),
        lambda r: r == ["0", "1"],
        0,
        0,
    ),
    ("text-to-image", lambda c: c.text_to_image("a red cat"), _is_png, 3, 0),
    (
        "text-to-image",
        lambda c: c.text_to_image("a cat", width=16, height=12),
        lambda r: _is_png(r, (16, 12)),
        2,
        0,
    ),
    (
        "text-to-speech",
        lambda c: c.text_to_speech("hello there"),
        lambda r: isinstance(r, bytes) and r[:4] == b"RIFF" and r[8:12] == b"WAVE",
        2,
        0,
    ),
    (
        "automatic-speech-recognition",
        lambda c: c.automatic_speech_recognition(WAV),
        lambda r: r.text == DEFAULT_REPLY,
        0,
        REPLY_WORDS,
    ),
    (
        "audio-classification",
        lambda c: c.audio_classification(WAV),
        lambda r: [e.label for e in r] == ["speech", "music", "silence"],
        0,
        0,
    ),
    (
        "audio-classification",  # parameters: the file goes in base64 inside JSON
        lambda c: c.audio_classification(WAV, top_k=1),
        lambda r: [e.label for e in r] == ["speech"],
        0,
        0,
    ),
    (
        "audio-to-audio",
        lambda c: c.audio_to_audio(WAV),
        lambda r: r[0].label == "speech" and r[0].blob[:4] == b"RIFF",
        0,
        0,
    ),
    (
        "image-classification",
        lambda c: c.image_classification(PNG, top_k=2),
        lambda r: [e.label for e in r] == ["cat", "dog"],
        0,
        0,
    ),
    (
        "image-to-text",
        lambda c: c.image_to_text(PNG),
        lambda r: r.generated_text == DEFAULT_REPLY,
        0,
        REPLY_WORDS,
    ),
    (
        "object-detection",
        lambda c: c.object_detection(PNG),
        lambda r: r[0].label == "cat" and (r[0].box.xmin, r[0].box.xmax) == (0, 4),
        0,
        0,
    ),
    (
        "image-segmentation",
        lambda c: c.image_segmentation(PNG),
        lambda r: r[0].label == "cat" and isinstance(r[0].mask, Image.Image) and r[0].mask.mode == "L",
        0,
        0,
    ),
    (
        "image-to-image",
        lambda c: c.image_to_image(PNG, prompt="make it blue"),
        _is_png,
        3,
        0,
    ),
    (
        "zero-shot-image-classification",
        lambda c: c.zero_shot_image_classification(PNG, ["cat", "dog"]),
        lambda r: [e.label for e in r] == ["cat", "dog"],
        0,
        0,
    ),
    (
        "document-question-answering",
        lambda c: c.document_question_answering(PNG, "what is the total"),
        lambda r: r[0].answer == "shekel",
        4,
        0,
    ),
    (
        "visual-question-answering",
        lambda c: c.visual_question_answering(PNG, "what colour is it"),
        lambda r: r[0].answer == "shekel",
        4,
        0,
    ),
]


@pytest.mark.parametrize(
    ("task", "call", "check", "input_tokens", "output_tokens"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_task(
    server: FakeInferenceServer,
    task: str,
    call: Callable[[Any], Any],
    check: Callable[[Any], bool],
    input_tokens: int,
    output_tokens: int,
) -> None:
    with InferenceClient(model=server.task_url(task), token="hf_test") as client:
        result = call(client)
    assert check(result), result
    request = server.requests[-1]
    assert request.path == f"/tasks/{task}"
    assert request.route == task
    assert (request.input_tokens, request.output_tokens) == (input_tokens, output_tokens)


def test_every_client_task_is_covered() -> None:
    covered = {c[0] for c in CASES}
    # Chat and text generation have their own tests; the video tasks and tabular regression have no
    # hf-inference helper in huggingface_hub, so they are reached through a provider (test_fake_server_router).
    elsewhere = {"conversational", "text-generation", "text-to-video", "image-to-video", "tabular-regression"}
    assert covered | elsewhere == set(TASKS)
    public = {
        name.replace("_", "-")
        for name in dir(InferenceClient)
        if not name.startswith("_") and name not in ("chat", "close", "get_endpoint_info", "health_check")
    }
    assert public - {"chat-completion"} <= set(TASKS), public - set(TASKS)


def test_raw_file_inputs_are_recorded(server: FakeInferenceServer) -> None:
    with InferenceClient(model=server.task_url("image-classification"), token="hf_test") as client:
        client.image_classification(PNG)
    request = server.requests[-1]
    assert request.body is None
    assert request.content == PNG


def test_binary_media_answers_have_their_content_type(server: FakeInferenceServer) -> None:
    with httpx.Client() as http:
        image = http.post(server.task_url("text-to-image"), json={"inputs": "a cat"})
        audio = http.post(server.task_url("text-to-speech"), json={"inputs": "hi"})
    assert image.headers["content-type"] == "image/png"
    assert audio.headers["content-type"] == "audio/wav"


def test_tabular_regression_answers_one_number_per_row(server: FakeInferenceServer) -> None:
    with httpx.Client() as http:
        answer = http.post(server.task_url("tabular-regression"), json={"table": TABLE})
    assert answer.json() == [0.5, 1.5]


def test_task_url_rejects_an_unknown_task(server: FakeInferenceServer) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        server.task_url("mind-reading")


def test_failures_on_task_routes_are_hugging_face_errors(server: FakeInferenceServer) -> None:
    server.fail_next(503)
    with (
        InferenceClient(model=server.task_url("fill-mask"), token="hf_test") as client,
        pytest.raises(huggingface_hub.errors.HfHubHTTPError, match="503"),
    ):
        client.fill_mask("a [MASK]")


ASYNC_TASKS = (
    "feature-extraction",
    "summarization",
    "text-to-image",
    "image-classification",
    "question-answering",
    "automatic-speech-recognition",
)
ASYNC_CASES = [c for c in CASES if c[0] in ASYNC_TASKS]


# huggingface_hub's AsyncInferenceClient posts raw files with httpx's deprecated ``data=<bytes>``: its own
# call, which only it can change.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning")
@pytest.mark.parametrize(
    ("task", "call", "check", "input_tokens", "output_tokens"),
    ASYNC_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(ASYNC_CASES)],
)
async def test_task_async(
    server: FakeInferenceServer,
    task: str,
    call: Callable[[Any], Any],
    check: Callable[[Any], bool],
    input_tokens: int,
    output_tokens: int,
) -> None:
    async with AsyncInferenceClient(model=server.task_url(task), token="hf_test") as client:
        result = await call(client)
    assert check(result), result
    assert (server.requests[-1].input_tokens, server.requests[-1].output_tokens) == (
        input_tokens,
        output_tokens,
    )
