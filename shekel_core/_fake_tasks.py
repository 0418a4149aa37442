"""The Hugging Face task endpoints of the local test server, and the Hub API bits clients ask for first.

``huggingface_hub.InferenceClient`` pointed at a URL (``InferenceClient(model=url)``, or ``base_url=url``,
its alias) posts every task to that very URL, with no suffix (only chat appends ``/v1/chat/completions``):
a JSON body ``{"inputs": ..., "parameters": ...}`` for text tasks (feature extraction puts its parameters
at the top level, tabular tasks send ``{"table": ...}``, visual question answering adds ``question`` and
``image``), the raw file with no content type for image and audio tasks without parameters, or the file in
base64 inside JSON when there are parameters. It asks for ``Accept: image/png`` for text-to-image and
image-to-image, ``*/*`` otherwise. Video tasks and tabular regression have no hf-inference helper: they
only go to a provider (together's ``/v2/videos`` here).

The path therefore names the task: ``/tasks/<task>`` here, or on the router
``/hf-inference/models/<model>/pipeline/<task>`` and ``/hf-inference/models/<model>`` (the model's task is
then what the Hub says it is: ``server.hub_models``). Answers have the hf-inference shapes; media answers are
real files made here: an 8x8 PNG, a short silent WAV, a minimal MP4. Standard library only.
"""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._fake_common import Answer, as_limit, next_id, words_of
from ._fake_openai import embedding_of

if TYPE_CHECKING:
    from .testing import FakeInferenceServer

#: Every task of ``huggingface_hub.InferenceClient`` (1.x), chat and text generation included.
TASKS = (
    "audio-classification",
    "audio-to-audio",
    "automatic-speech-recognition",
    "conversational",
    "document-question-answering",
    "feature-extraction",
    "fill-mask",
    "image-classification",
    "image-segmentation",
    "image-to-image",
    "image-to-text",
    "image-to-video",
    "object-detection",
    "question-answering",
    "sentence-similarity",
    "summarization",
    "table-question-answering",
    "tabular-classification",
    "tabular-regression",
    "text-classification",
    "text-generation",
    "text-to-image",
    "text-to-speech",
    "text-to-video",
    "token-classification",
    "translation",
    "visual-question-answering",
    "zero-shot-classification",
    "zero-shot-image-classification",
)

#: Inference Providers the router knows (for ``model:provider`` suffixes and the Hub's provider mapping).
PROVIDERS = (
    "hf-inference",
    "together",
    "baseten",
    "cerebras",
    "cohere",
    "deepinfra",
    "fal-ai",
    "featherless-ai",
    "fireworks-ai",
    "groq",
    "hyperbolic",
    "nebius",
    "novita",
    "nscale",
    "openai",
    "ovhcloud",
    "publicai",
    "replicate",
    "sambanova",
    "scaleway",
    "wavespeed",
    "zai-org",
)
#: Routing policies the router takes in place of a provider name.
POLICIES = ("auto", "fastest", "cheapest", "preferred")

#: Tasks hf-inference does not serve: the Hub maps them to together first, whose protocol the server speaks.
_TOGETHER_FIRST = ("conversational", "text-to-video", "image-to-video")

# ---------------------------------------------------------------- media files


def png(width: int = 8, height: int = 8, *, grey: bool = False, shade: int = 128) -> bytes:
    """A valid PNG of one colour (RGB, or greyscale for masks)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    pixel = bytes([shade]) if grey else bytes([shade, 64, 192])
    rows = b"".join(b"\x00" + pixel * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def wav(seconds: float = 0.1, rate: int = 16000) -> bytes:
    """A valid mono 16-bit WAV of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(seconds * rate))
    return buffer.getvalue()


def mp4() -> bytes:
    """The smallest MP4 a player recognises as such: an ``ftyp`` box and an empty ``free`` box."""
    ftyp = b"ftypisom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41"
    return struct.pack(">I", 8 + len(ftyp)) + ftyp + struct.pack(">I", 8) + b"free"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _size(value: object, default: int = 8) -> int:
    n = as_limit(value)
    return min(max(n, 1), 1024) if n is not None else default


# ---------------------------------------------------------------- which task


def task_from_path(path: str, hub_models: Mapping[str, str]) -> str | None:
    """The task a POST path names, or None when it names none."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[-2] == "tasks" and parts[-1] in TASKS:
        return parts[-1]
    if "pipeline" in parts[:-1] and parts[-1] in TASKS:
        return parts[-1]
    if "models" in parts:
        model = "/".join(parts[parts.index("models") + 1 :])
        if model:
            task = hub_models.get(model)
            return task if task is not None else "text-generation"
    return None


def hub_task(hub_models: Mapping[str, str], model: str) -> str:
    return hub_models.get(model, "conversational")


def hub_model_info(model: str, task: str) -> dict[str, Any]:
    """``GET /api/models/<model>``: what ``HfApi.model_info`` reads to route a call (pipeline tag, tags,
    the provider mapping), every provider serving the model for ``task`` under the model's own id."""
    first = "together" if task in _TOGETHER_FIRST else "hf-inference"
    order = [first, *(p for p in PROVIDERS if p != first)]
    mapping = {p: {"status": "live", "providerId": model, "task": task} for p in order}
    pipeline_tag = "text-generation" if task == "conversational" else task
    tags = [pipeline_tag]
    if task in ("feature-extraction", "sentence-similarity"):
        tags = ["feature-extraction", "sentence-similarity"]
    return {
        "id": model,
        "modelId": model,
        "pipeline_tag": pipeline_tag,
        "tags": tags,
        "private": False,
        "inferenceProviderMapping": mapping,
    }


# ---------------------------------------------------------------- answers


def _texts(task: str, body: Mapping[str, Any] | None) -> list[str]:
    """The text a task reads, for the word count (images, audio and tables of numbers read none)."""
    if body is None:
        return []
    inputs = body.get("inputs")
    parameters = body.get("parameters") or {}
    if task in ("question-answering", "sentence-similarity") and isinstance(inputs, dict):
        values = list(inputs.values())
        return [v for v in values if isinstance(v, str)] + [
            s for v in values if isinstance(v, list) for s in v if isinstance(s, str)
        ]
    if task in ("document-question-answering",) and isinstance(inputs, dict):
        return [str(inputs.get("question") or "")]
    if task == "table-question-answering" and isinstance(inputs, dict):
        table = inputs.get("table") or {}
        cells = [str(c) for column in table.values() if isinstance(column, list) for c in column]
        return [str(inputs.get("query") or ""), *map(str, table), *cells]
    if task in ("tabular-classification", "tabular-regression"):
        return []
    if task == "visual-question-answering":
        return [str(body.get("question") or "")]
    if task == "image-to-image":
        return [str(parameters.get("prompt") or "")]
    if isinstance(inputs, str) and task not in _BINARY_INPUT:
        return [inputs]
    if isinstance(inputs, list):
        return [s for s in inputs if isinstance(s, str)]
    return []


_BINARY_INPUT = {
    "audio-classification",
    "audio-to-audio",
    "automatic-speech-recognition",
    "image-classification",
    "image-segmentation",
    "image-to-image",
    "image-to-text",
    "object-detection",
    "zero-shot-image-classification",
    "visual-question-answering",
}


def _labels(top_k: object, names: tuple[str, ...]) -> list[dict[str, Any]]:
    k = as_limit(top_k) or len(names)
    scores = [0.9, 0.07, 0.02, 0.01]
    return [{"label": name, "score": scores[i % len(scores)]} for i, name in enumerate(names[: max(k, 1)])]


def task_answer(server: FakeInferenceServer, task: str, body: Mapping[str, Any] | None) -> Answer:
    """The hf-inference answer to ``task``; ``body`` is None when the request was a raw file."""
    parameters: Mapping[str, Any] = (body or {}).get("parameters") or {}
    inputs = (body or {}).get("inputs")
    prompt = sum(words_of(t) for t in _texts(task, body))
    generated: str | None = None  # the text of text-output tasks: their output tokens

    def text(limit: object = None) -> str:
        nonlocal generated
        generated = " ".join(server._words(limit))
        return generated

    payload: Any
    if task == "feature-extraction":
        items = inputs if isinstance(inputs, list) else [inputs]
        width = as_limit((body or {}).get("dimensions")) or server.embedding_dim
        payload = [embedding_of(item, width) for item in items]
    elif task == "sentence-similarity":
        source = set(str((inputs or {}).get("source_sentence") or "").lower().split())
        others = (inputs or {}).get("sentences") or []
        payload = [
            round(
                len(source & set(str(s).lower().split())) / max(len(source | set(str(s).lower().split())), 1),
                4,
            )
            for s in others
        ]
    elif task in ("summarization", "translation"):
        generate = parameters.get("generate_parameters") or {}
        key = "summary_text" if task == "summarization" else "translation_text"
        payload = [{key: text(generate.get("max_new_tokens"))}]
    elif task == "image-to-text":
        payload = [{"generated_text": text()}]
    elif task == "automatic-speech-recognition":
        payload = {"text": text()}
    elif task == "text-classification":
        payload = [_labels(parameters.get("top_k"), ("POSITIVE", "NEGATIVE"))]
    elif task == "token-classification":
        payload, start = [], 0
        sentence = inputs if isinstance(inputs, str) else ""
        for word in sentence.split()[:2]:
            start = sentence.index(word, start)
            payload.append(
                {"entity_group": "MISC", "score": 0.9, "word": word, "start": start, "end": start + len(word)}
            )
            start += len(word)
    elif task == "fill-mask":
        masked = inputs if isinstance(inputs, str) else ""
        k = as_limit(parameters.get("top_k")) or 2
        payload = [
            {
                "score": round(0.9 / (i + 1), 4),
                "token": 1000 + i,
                "token_str": token,
                "sequence": masked.replace("[MASK]", token).replace("<mask>", token),
            }
            for i, token in enumerate(("paris", "london", "rome", "berlin", "madrid")[:k])
        ]
    elif task == "question-answering":
        context = str((inputs or {}).get("context") or "")
        answer = context.split()[0] if context.split() else ""
        start = context.find(answer) if answer else 0
        payload = {"answer": answer, "score": 0.9, "start": start, "end": start + len(answer)}
    elif task in ("zero-shot-classification", "zero-shot-image-classification"):
        labels = parameters.get("candidate_labels") or []
        payload = [{"label": str(label), "score": round(1 / (i + 2), 4)} for i, label in enumerate(labels)]
    elif task == "table-question-answering":
        table = (inputs or {}).get("table") or {}
        first = next((column[0] for column in table.values() if isinstance(column, list) and column), "")
        payload = {"answer": str(first), "coordinates": [[0, 0]], "cells": [str(first)], "aggregator": "NONE"}
    elif task == "tabular-classification":
        rows = max(
            (len(c) for c in ((body or {}).get("table") or {}).values() if isinstance(c, list)), default=0
        )
        payload = [str(i % 2) for i in range(rows)]
    elif task == "tabular-regression":
        rows = max(
            (len(c) for c in ((body or {}).get("table") or {}).values() if isinstance(c, list)), default=0
        )
        payload = [float(i) + 0.5 for i in range(rows)]
    elif task == "document-question-answering":
        payload = [{"answer": "shekel", "score": 0.9, "start": 0, "end": 0}]
    elif task == "visual-question-answering":
        payload = [{"answer": "shekel", "score": 0.9}]
    elif task == "audio-classification":
        payload = _labels(parameters.get("top_k"), ("speech", "music", "silence"))
    elif task == "image-classification":
        payload = _labels(parameters.get("top_k"), ("cat", "dog", "bird"))
    elif task == "object-detection":
        payload = [{"label": "cat", "score": 0.9, "box": {"xmin": 0, "ymin": 0, "xmax": 4, "ymax": 4}}]
    elif task == "image-segmentation":
        payload = [{"label": "cat", "score": 0.9, "mask": _b64(png(grey=True, shade=255))}]
    elif task == "audio-to-audio":
        payload = [{"label": "speech", "content-type": "audio/wav", "blob": _b64(wav())}]
    elif task in ("text-to-image", "image-to-image"):
        size = parameters.get("target_size") or {}
        width = _size(parameters.get("width", size.get("width") if isinstance(size, dict) else None))
        height = _size(parameters.get("height", size.get("height") if isinstance(size, dict) else None))
        return Answer(body=png(width, height), content_type="image/png", input_tokens=prompt, output_tokens=0)
    elif task == "text-to-speech":
        return Answer(body=wav(), content_type="audio/wav", input_tokens=prompt, output_tokens=0)
    elif task in ("text-to-video", "image-to-video"):
        return Answer(body=mp4(), content_type="video/mp4", input_tokens=prompt, output_tokens=0)
    else:  # pragma: no cover - the router sends text generation and chat elsewhere
        payload = {"error": f"task {task} is not served here"}
        return Answer.json(payload, status=400)
    return Answer.json(payload, input_tokens=prompt, output_tokens=words_of(generated))


# ---------------------------------------------------------------- provider media APIs (together's shapes)


def images_answer(server: FakeInferenceServer, body: Mapping[str, Any]) -> Answer:
    """``POST /v1/images/generations``: ``data[0].b64_json`` (or ``url``) of a PNG."""
    picture = png(_size(body.get("width")), _size(body.get("height")))
    item: dict[str, Any] = {"index": 0, "type": "b64_json"}
    if body.get("response_format") == "url":
        item["url"] = f"{server.url}/files/image.png"
    else:
        item["b64_json"] = _b64(picture)
    words = words_of(body.get("prompt"))
    answer = {"id": next_id("img_"), "model": server.answer_model(body), "object": "list", "data": [item]}
    return Answer.json(answer, input_tokens=words, output_tokens=0)


def speech_answer(body: Mapping[str, Any]) -> Answer:
    """``POST /v1/audio/speech``: the audio bytes."""
    return Answer(
        body=wav(), content_type="audio/wav", input_tokens=words_of(body.get("input")), output_tokens=0
    )


def video_job(server: FakeInferenceServer, job_id: str, model: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "object": "video",
        "model": model,
        "status": "completed",
        "outputs": {"video_url": f"{server.url}/files/{job_id}.mp4", "cost": 0},
    }


def video_answer(server: FakeInferenceServer, body: Mapping[str, Any]) -> Answer:
    """``POST /v2/videos`` (together): a job that is already ``completed``, its video one GET away."""
    job = video_job(server, next_id("video_"), server.answer_model(body))
    return Answer.json(job, input_tokens=words_of(body.get("prompt")), output_tokens=0)
