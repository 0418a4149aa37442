"""A local inference server for offline tests: ``from shekel.testing import FakeInferenceServer``.

It speaks, over real HTTP on 127.0.0.1, the protocols the SDKs that shekel counts use, so tests run the real
clients against it:

* **OpenAI-style chat completions** (JSON and SSE streams, with usage where real providers put it, see
  :data:`StreamUsage`) at any path ending in ``/chat/completions``, and **TGI text generation** at any other
  path: ``InferenceClient(base_url=server.url)`` (chat) or ``InferenceClient(model=server.url)``.
* **OpenAI Responses** (``/responses``, JSON and its named SSE events) and **Embeddings** (``/embeddings``,
  floats or base64): ``openai.OpenAI(base_url=server.url + "/v1", api_key="x")``.
* **Anthropic Messages** (``/v1/messages``, JSON and its SSE events; ``/v1/messages/count_tokens``):
  ``anthropic.Anthropic(base_url=server.url, api_key="x")``.
* **Every other ``huggingface_hub.InferenceClient`` task**, in hf-inference's shapes (PNG, WAV and MP4 files
  for media tasks). A client pointed at a URL posts every task to that URL, so the path names the task:
  ``InferenceClient(model=server.task_url("feature-extraction"))`` posts to ``/tasks/feature-extraction``.
  The router's ``/hf-inference/models/<model>/pipeline/<task>`` names it too, and for
  ``/hf-inference/models/<model>`` the task is the model's in ``server.hub_models``.
* **The Hugging Face router and Hub, answered locally**: ``server.transport()`` (and ``async_transport()``)
  is an httpx transport that sends any URL (``https://router.huggingface.co/...``, ``https://api.openai.com``,
  ``https://api.anthropic.com``) to the server, path and ``Host`` header kept: ``openai.OpenAI(base_url=
  "https://router.huggingface.co/v1", http_client=httpx.Client(transport=server.transport()))``. The
  Anthropic SDK 2.x is built on httpx2, so it takes ``httpx2.Client(transport=server.transport("httpx2"))``.
  Inside ``with server.route_huggingface_hub():`` every client huggingface_hub makes uses it, so
  ``InferenceClient(provider="together", api_key="hf_x")`` reaches the server, and so do the Hub look-ups it
  makes first (``/api/models/<model>``, answered from ``server.hub_models``). With
  ``FakeInferenceServer(router="hf-inference")`` answers name their provider in ``x-inference-provider`` as
  the router's do (the model's ``:together`` suffix, the path's ``/together/`` prefix, else the one given);
  ``server.headers`` sets any header by hand.

Errors: ``fail_next(status)`` answers in the protocol of the route it hits (Hugging Face, OpenAI or
Anthropic error bodies); ``respond_next`` and ``replay_next`` send exact bodies, ``drop_stream_after`` cuts a
stream. Knobs script what real servers vary: where chat streams put usage, cached and reasoning tokens
(``openai_cached_tokens``, ``openai_reasoning_tokens``, ``anthropic_cache_read``, ``anthropic_cache_write``),
the embedding width.

Token counting is deterministic so tests can assert exact spend: a prompt costs one token per
whitespace-separated word plus 3 per chat message (an OpenAI ``instructions``, a Responses string ``input``
and an Anthropic ``system`` each count as one message; embedding and task inputs count their words alone,
token arrays their length); the reply is ``reply`` cut to the request's limit (``max_tokens``,
``max_output_tokens``, ``max_new_tokens``) in words, one word per stream chunk, one token per word.
``server.requests`` records every request with the ``route`` it took and the ``input_tokens`` and
``output_tokens`` the answer reported. The server uses the standard library only; the transports need httpx.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from ._fake_common import Answer, as_limit, prompt_tokens_of
from ._fake_tasks import POLICIES, PROVIDERS, TASKS

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_REPLY",
    "TASKS",
    "FakeInferenceServer",
    "RecordedRequest",
    "StreamUsage",
    "add_to_hub_cache",
    "prompt_tokens_of",
]

#: Where usage goes in a chat stream, after real servers (see the recorded responses in the docs):
#: ``"requested"``: a separate ``choices: []`` chunk, only when ``stream_options.include_usage`` is set
#: (TGI 3, OpenAI); ``"never"``: nowhere (nebius, sambanova, TGI without the option); ``"final"``: on the
#: chunk with ``finish_reason`` (together, fireworks, cerebras); ``"cumulative"``: a running total on every
#: chunk (hyperbolic, novita); ``"always"``: a separate usage chunk even when not asked for.
StreamUsage = Literal["requested", "never", "final", "cumulative", "always"]

DEFAULT_REPLY = (
    "Transformers are neural networks that use attention to weigh every token of the input against every "
    "other token, which lets them model long range context in parallel and has made them the basis of "
    "modern language models for translation, summarisation, question answering and code."
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received.

    ``body`` is the parsed JSON body (None when it was not JSON: a raw image or audio file is in
    ``content``). ``route`` says what answered it: ``"chat.completions"``, ``"text-generation"``,
    ``"responses"``, ``"embeddings"``, ``"messages"``, ``"messages.count_tokens"``, a Hugging Face task name
    (``"feature-extraction"``...), ``"images.generations"``, ``"audio.speech"``, ``"videos"``, or for GETs
    ``"hub.model_info"``, ``"files"``, ``"health"``. ``input_tokens`` and ``output_tokens`` are what the answer
    reported (what a provider would bill); None for scripted answers and routes that bill nothing.
    """

    method: str
    path: str
    body: Any
    headers: Mapping[str, str] = field(repr=False)
    route: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    content: bytes = field(default=b"", repr=False)

    @property
    def json(self) -> Any:
        return self.body


@dataclass
class _Scripted:
    status: int
    body: bytes | None  # None: the error body of the route's own protocol
    content_type: str
    headers: Mapping[str, str]
    streamed: bool


def add_to_hub_cache(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    files: Mapping[str, str | bytes],
    *,
    commit: str | None = None,
) -> Path:
    """Put a model's files into a Hugging Face cache folder the way ``hf_hub_download`` leaves them, offline.

    ``models--{org}--{name}/blobs/{hash}`` holds each file (named by its SHA-256 here), ``snapshots/{commit}/{filename}``
    links to it (a relative symlink; a copy where the system allows none) and ``refs/main`` names the commit.
    Point ``HF_HUB_CACHE`` at ``cache_dir`` and shekel finds the files as it finds downloaded ones, e.g. a
    ``tokenizer.json`` and ``tokenizer_config.json`` for exact prompt counts. Returns the snapshot folder.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for filename, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            link.write_bytes(data)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


class FakeInferenceServer:
    """A local inference server on 127.0.0.1 (port 0), in a background thread: see the module docstring.

    Args:
        reply: The text every answer is made of (cut to ``max_tokens`` words).
        usage: Whether non-stream chat answers carry ``usage``.
        stream_usage: Where usage goes in chat streams (see :data:`StreamUsage`).
        send_done: Whether chat streams end with ``data: [DONE]``.
        extra_completion_tokens: Added to reported chat completion tokens (a provider reporting one more
            than ``max_tokens``, as hyperbolic does).
        latency: Seconds to wait before answering each request.
        chunk_delay: Seconds between stream chunks.
        model: The model id reported in answers when the request names none.
        default_max_tokens: Output tokens when the request gives no limit.
        headers: Extra headers on every unscripted answer, e.g. ``{"x-inference-provider": "together"}``
            as the router sends; change ``server.headers`` between calls to vary them.
        router: Answer as the Hugging Face router does: ``x-inference-provider`` names the provider a call
            asks for (its model's ``:provider`` suffix, else its path's ``/<provider>/`` prefix) and, for
            auto-routed calls, this provider. ``headers`` still wins. None (the default): no such header.
        hub_models: The Hub's task for each model id (``{"BAAI/bge-small-en-v1.5": "feature-extraction"}``),
            read by ``/api/models/<model>`` (what ``InferenceClient`` asks before a provider call) and by the
            router's ``/hf-inference/models/<model>``. Models not listed are chat models (``"conversational"``).
        embedding_dim: The width of embeddings (``dimensions`` in a request overrides it).
        anthropic_cache_read: Prompt tokens Anthropic answers report as read from the cache
            (``cache_read_input_tokens``); ``input_tokens`` is the prompt less the cached tokens.
        anthropic_cache_write: Prompt tokens reported as written to the cache (``cache_creation_input_tokens``).
        openai_cached_tokens: Prompt tokens reported as cached by Responses answers (and by chat answers, in
            ``prompt_tokens_details``, when not 0); part of the input tokens, as OpenAI counts them.
        openai_reasoning_tokens: Reasoning tokens Responses answers report, added to their output tokens.
    """

    def __init__(
        self,
        *,
        reply: str = DEFAULT_REPLY,
        usage: bool = True,
        stream_usage: StreamUsage = "requested",
        send_done: bool = True,
        extra_completion_tokens: int = 0,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        model: str = "fake/model",
        default_max_tokens: int = 1000,
        headers: Mapping[str, str] | None = None,
        router: str | None = None,
        hub_models: Mapping[str, str] | None = None,
        embedding_dim: int = 8,
        anthropic_cache_read: int = 0,
        anthropic_cache_write: int = 0,
        openai_cached_tokens: int = 0,
        openai_reasoning_tokens: int = 0,
    ) -> None:
        self.reply = reply
        self.usage = usage
        self.stream_usage: StreamUsage = stream_usage
        self.send_done = send_done
        self.extra_completion_tokens = extra_completion_tokens
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.model = model
        self.default_max_tokens = default_max_tokens
        self.headers: dict[str, str] = dict(headers or {})
        self.router = router
        self.hub_models: dict[str, str] = dict(hub_models or {})
        self.embedding_dim = embedding_dim
        self.anthropic_cache_read = anthropic_cache_read
        self.anthropic_cache_write = anthropic_cache_write
        self.openai_cached_tokens = openai_cached_tokens
        self.openai_reasoning_tokens = openai_reasoning_tokens
        self.requests: list[RecordedRequest] = []
        self._script: deque[_Scripted] = deque()
        self._drop_after: deque[int] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeInferenceServer:
        from ._fake_http import Handler

        handler = type("_Handler", (Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="shekel-fake-hf",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        # Connections a client keeps alive would hold their handler thread (and socket) until the client
        # closes them: end them now, so a stopped server leaves nothing open behind it.
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeInferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: pass it as ``base_url`` (chat) or ``model`` (text generation)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(
                "FakeInferenceServer is not started; use it as a context manager or call start()."
            )
        return int(self._httpd.server_address[1])

    def task_url(self, task: str) -> str:
        """The URL to give ``InferenceClient(model=...)`` for a task: ``{url}/tasks/<task>``."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; the tasks are: {', '.join(TASKS)}")
        return f"{self.url}/tasks/{task}"

    # ---------------------------------------------------------------- routing real hosts here
    @overload
    def transport(self) -> httpx.BaseTransport: ...
    @overload
    def transport(self, package: str) -> Any: ...
    def transport(self, package: str = "httpx") -> Any:
        """An httpx transport sending every request to this server, path kept, whatever its host.

        ``httpx.Client(transport=server.transport())`` makes ``https://router.huggingface.co/v1/...``,
        ``https://api.openai.com/...`` and ``https://api.anthropic.com/...`` land here. Closing the client
        closes it. The Anthropic SDK 2.x runs on httpx2, a fork of httpx whose clients take only its own
        transports: ``anthropic.Anthropic(http_client=httpx2.Client(transport=server.transport("httpx2")))``.
        """
        from ._fake_transport import transport_classes

        return transport_classes(package)[0](self.port)

    @overload
    def async_transport(self) -> httpx.AsyncBaseTransport: ...
    @overload
    def async_transport(self, package: str) -> Any: ...
    def async_transport(self, package: str = "httpx") -> Any:
        """The async twin of :meth:`transport`, for ``httpx.AsyncClient`` (or ``httpx2.AsyncClient``)."""
        from ._fake_transport import transport_classes

        return transport_classes(package)[1](self.port)

    def route_huggingface_hub(self) -> AbstractContextManager[None]:
        """Make every HTTP client huggingface_hub creates use :meth:`transport` (and the async one).

        Installs client factories with ``huggingface_hub.set_client_factory`` and
        ``set_async_client_factory``; on exit puts back the factories that were there (only if ours are
        still installed) and closes the shared client made by ours. Async clients made inside must be
        closed by their owner, as always.
        """
        from ._fake_transport import route_huggingface_hub

        return route_huggingface_hub(self.port)

    # ---------------------------------------------------------------- scripting
    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        """Forget received requests and scripted answers."""
        with self._lock:
            self.requests.clear()
            self._script.clear()
            self._drop_after.clear()

    def fail_next(
        self,
        status: int = 503,
        body: str | Mapping[str, Any] | None = None,
        *,
        times: int = 1,
        content_type: str = "application/json",
    ) -> None:
        """Answer the next ``times`` requests with an error status.

        Without ``body``, the error is in the protocol of the route it answers: Hugging Face's
        ``{"error": "Model fake/model is currently loading", "estimated_time": 20.0}`` (chat, text
        generation, tasks), OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (responses,
        embeddings, images, speech, videos) or Anthropic's ``{"type": "error", "error": {"type", "message"}}``
        (messages, with the type the status means: ``rate_limit_error`` for 429, ``api_error`` for 500,
        ``overloaded_error`` for 529).
        """
        raw = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        with self._lock:
            for _ in range(times):
                self._script.append(_Scripted(status, raw, content_type, {}, streamed=False))

    def respond_next(
        self,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next request with exactly this body (SSE when ``content_type`` is text/event-stream)."""
        raw = body.encode() if isinstance(body, str) else body
        streamed = content_type.startswith("text/event-stream")
        with self._lock:
            self._script.append(_Scripted(status, raw, content_type, dict(headers or {}), streamed))

    def replay_next(self, recording: str | Path | Mapping[str, Any]) -> None:
        """Answer the next request with a recorded real response (a file of ``recorded-hf-responses``)."""
        data = recording if isinstance(recording, Mapping) else json.loads(Path(recording).read_text())
        headers = dict(data.get("headers") or {})
        if data.get("body_format", "").startswith("syrupy"):
            chunks = json.loads(data["body"])
            body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            content_type = "text/event-stream"
        else:
            body = data["body"]
            content_type = headers.pop("content-type", "application/json")
        for name in ("content-length", "transfer-encoding", "connection", "content-encoding"):
            headers.pop(name, None)
        self.respond_next(body, status=int(data["status"]), content_type=content_type, headers=headers)

    def drop_stream_after(self, chunks: int) -> None:
        """Cut the connection of the next stream after ``chunks`` events, without ending the body."""
        with self._lock:
            self._drop_after.append(chunks)

    # ---------------------------------------------------------------- answers
    def _take(self, streamed: bool) -> tuple[_Scripted | None, int | None]:
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            drop = self._drop_after.popleft() if (self._drop_after and streamed) else None
            return scripted, drop

    def _append(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _words(self, limit: object) -> list[str]:
        words = self.reply.split()
        n = as_limit(limit)
        return words[: max(n if n is not None else self.default_max_tokens, 0)]

    def answer_model(self, body: Mapping[str, Any]) -> Any:
        """The model an answer names: the request's, without the router's ``:provider`` suffix."""
        model = body.get("model") or self.model
        if isinstance(model, str) and ":" in model:
            base, _, suffix = model.rpartition(":")
            if base and suffix in PROVIDERS + POLICIES:
                return base
        return model

    def served_by(self, path: str, body: Any) -> str | None:
        """The provider the router would name in ``x-inference-provider`` for this request (see ``router``)."""
        if self.router is None:
            return None
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and ":" in model:
            suffix = model.rpartition(":")[2]
            if suffix in PROVIDERS:
                return suffix
        first = path.lstrip("/").split("/", 1)[0]
        return first if first in PROVIDERS else self.router

    def chat_answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        words = self._words(body.get("max_tokens"))
        prompt = prompt_tokens_of(body.get("messages"))
        answer: dict[str, Any] = {
            "object": "chat.completion",
            "id": "",
            "created": int(time.time()),
            "model": self.answer_model(body),
            "system_fingerprint": "shekel-fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "logprobs": None,
                    "finish_reason": "length" if len(words) < len(self.reply.split()) else "stop",
                }
            ],
        }
        if self.usage:
            answer["usage"] = self._chat_usage(prompt, len(words) + self.extra_completion_tokens)
        return answer

    def _chat_usage(self, prompt: int, completion: int) -> dict[str, Any]:
        usage: dict[str, Any] = _usage(prompt, completion)
        if self.openai_cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.openai_cached_tokens, prompt)}
        return usage

    def chat_events(self, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        words = self._words(body.get("max_tokens"))
        prompt = prompt_tokens_of(body.get("messages"))
        model = self.answer_model(body)
        options = body.get("stream_options") or {}
        mode = self.stream_usage
        separate = mode == "always" or (mode == "requested" and bool(options.get("include_usage")))
        finish = "length" if len(words) < len(self.reply.split()) else "stop"
        base = {
            "object": "chat.completion.chunk",
            "id": "",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "shekel-fake",
        }
        for i, word in enumerate(words):
            last = i == len(words) - 1
            chunk: dict[str, Any] = {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": word if i == 0 else " " + word},
                        "logprobs": None,
                        "finish_reason": finish if last else None,
                    }
                ],
                "usage": None,
            }
            if mode == "cumulative" or (mode == "final" and last):
                extra = self.extra_completion_tokens if last else 0
                chunk["usage"] = self._chat_usage(prompt, i + 1 + extra)
            yield chunk
        if not words:
            yield {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": None,
            }
        if separate:
            usage = self._chat_usage(prompt, len(words) + self.extra_completion_tokens)
            yield {**base, "choices": [], "usage": usage}

    def text_answer(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        parameters = body.get("parameters") or {}
        words = self._words(parameters.get("max_new_tokens", 20))
        text = " ".join(words)
        answer: dict[str, Any] = {"generated_text": text}
        if parameters.get("details"):
            answer["details"] = {
                "finish_reason": "length",
                "generated_tokens": len(words),
                "seed": None,
                "prefill": [],
                "tokens": [
                    {"id": i, "text": w, "logprob": -0.5, "special": False} for i, w in enumerate(words)
                ],
            }
        return [answer]

    def text_events(self, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        parameters = body.get("parameters") or {}
        words = self._words(parameters.get("max_new_tokens", 20))
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield {
                "index": i + 1,
                "token": {"id": i, "text": (" " if i else "") + word, "logprob": -0.5, "special": False},
                "generated_text": " ".join(words) if last else None,
                "details": {"finish_reason": "length", "generated_tokens": len(words), "seed": None}
                if last
                else None,
            }

    def _chat(self, body: Mapping[str, Any]) -> Answer:
        prompt = prompt_tokens_of(body.get("messages"))
        output = len(self._words(body.get("max_tokens"))) + self.extra_completion_tokens
        if body.get("stream"):
            events = ((None, e) for e in self.chat_events(body))
            return Answer(
                events=events, content_type="text/event-stream", input_tokens=prompt, output_tokens=output
            )
        return Answer.json(self.chat_answer(body), input_tokens=prompt, output_tokens=output)

    def _text_generation(self, body: Mapping[str, Any]) -> Answer:
        inputs = body.get("inputs")
        prompt = len(inputs.split()) if isinstance(inputs, str) else 0
        output = len(self._words((body.get("parameters") or {}).get("max_new_tokens", 20)))
        if body.get("stream"):
            events = ((None, e) for e in self.text_events(body))
            return Answer(
                events=events, content_type="text/event-stream", input_tokens=prompt, output_tokens=output
            )
        return Answer.json(self.text_answer(body), input_tokens=prompt, output_tokens=output)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Server(ThreadingHTTPServer):
    # Many clients connect at once (a batch on 16 threads, 100 asyncio tasks): a listen backlog of 5, the
    # standard library's default, drops connections while the accepting thread is busy.
    request_queue_size = 256
