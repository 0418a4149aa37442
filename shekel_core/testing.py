"""A local Hugging Face inference server for offline tests: ``from shekel.testing import FakeInferenceServer``.

It speaks the protocol ``huggingface_hub.InferenceClient`` uses over real HTTP on 127.0.0.1: OpenAI-style
chat completions (JSON and SSE streams, with or without ``usage``) and TGI text generation. Point a client at
it with ``InferenceClient(base_url=server.url)`` (chat) or ``InferenceClient(model=server.url)``.

Token counting is deterministic so tests can assert exact spend: a prompt costs one token per
whitespace-separated word plus 3 per chat message; the reply is ``reply`` cut to ``max_tokens`` words, one
word per stream chunk, one token per word. Uses the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

__all__ = ["FakeInferenceServer", "RecordedRequest", "StreamUsage", "add_to_hub_cache"]

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
    """One request the server received."""

    method: str
    path: str
    body: Any
    headers: Mapping[str, str] = field(repr=False)

    @property
    def json(self) -> Any:
        return self.body


@dataclass
class _Scripted:
    status: int
    body: bytes
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


def prompt_tokens_of(messages: Any) -> int:
    """The server's prompt count for chat messages: words + 3 per message."""
    total = 0
    for message in messages or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += len(str(content or "").split()) + 3
    return total


class FakeInferenceServer:
    """A chat-completions and text-generation server on 127.0.0.1 (port 0), in a background thread.

    Args:
        reply: The text every answer is made of (cut to ``max_tokens`` words).
        usage: Whether non-stream answers carry ``usage``.
        stream_usage: Where usage goes in chat streams (see :data:`StreamUsage`).
        send_done: Whether streams end with ``data: [DONE]``.
        extra_completion_tokens: Added to reported completion tokens (a provider reporting one more than
            ``max_tokens``, as hyperbolic does).
        latency: Seconds to wait before answering each request.
        chunk_delay: Seconds between stream chunks.
        model: The model id reported in answers when the request names none.
        default_max_tokens: Output tokens when the request gives no limit.
        headers: Extra headers on every unscripted answer, e.g. ``{"x-inference-provider": "together"}``
            as the router sends; change ``server.headers`` between calls to vary them.
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
        self.requests: list[RecordedRequest] = []
        self._script: deque[_Scripted] = deque()
        self._drop_after: deque[int] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeInferenceServer:
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
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

    def __enter__(self) -> FakeInferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: pass it as ``base_url`` (chat) or ``model`` (text generation)."""
        if self._httpd is None:
            raise RuntimeError(
                "FakeInferenceServer is not started; use it as a context manager or call start()."
            )
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

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
        """Answer the next ``times`` requests with an error status (503 "model loading" by default)."""
        if body is None:
            body = {"error": "Model fake/model is currently loading", "estimated_time": 20.0}
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
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
    def _record(self, request: RecordedRequest) -> tuple[_Scripted | None, int | None]:
        with self._lock:
            self.requests.append(request)
            scripted = self._script.popleft() if self._script else None
            drop = (
                self._drop_after.popleft()
                if (self._drop_after and request.body and request.body.get("stream"))
                else None
            )
            return scripted, drop

    def _words(self, limit: object) -> list[str]:
        # Read a limit the way a lenient (pydantic) server does: 10, 10.0 and "10" all mean 10.
        words = self.reply.split()
        if (isinstance(limit, float) and limit.is_integer()) or (
            isinstance(limit, str) and limit.strip().isascii() and limit.strip().isdigit()
        ):
            limit = int(limit)
        n = limit if isinstance(limit, int) and not isinstance(limit, bool) else self.default_max_tokens
        return words[: max(n, 0)]

    def chat_answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        words = self._words(body.get("max_tokens"))
        prompt = prompt_tokens_of(body.get("messages"))
        answer: dict[str, Any] = {
            "object": "chat.completion",
            "id": "",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
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
            answer["usage"] = _usage(prompt, len(words) + self.extra_completion_tokens)
        return answer

    def chat_events(self, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        words = self._words(body.get("max_tokens"))
        prompt = prompt_tokens_of(body.get("messages"))
        model = body.get("model") or self.model
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
                chunk["usage"] = _usage(prompt, i + 1 + extra)
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
            yield {**base, "choices": [], "usage": _usage(prompt, len(words) + self.extra_completion_tokens)}

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


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeInferenceServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle holds the body for ~40 ms per request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read self.fake.requests
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/health", "/info"):
            self._send_json(200, {"status": "ok", "model_id": self.fake.model})
        else:
            self._send_json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        request = RecordedRequest("POST", self.path, body, {k.lower(): v for k, v in self.headers.items()})
        scripted, drop = self.fake._record(request)
        if self.fake.latency:
            time.sleep(self.fake.latency)
        if scripted is not None:
            self._send_scripted(scripted)
            return
        if not isinstance(body, dict):
            self._send_raw(422, b"Failed to deserialize the JSON body", "text/plain; charset=utf-8")
            return
        chat = self.path.rstrip("/").endswith("/chat/completions")
        if body.get("stream"):
            events = self.fake.chat_events(body) if chat else self.fake.text_events(body)
            self._send_stream(events, drop, space=chat, done=self.fake.send_done and chat)
        else:
            answer = self.fake.chat_answer(body) if chat else self.fake.text_answer(body)
            self._send_raw(200, json.dumps(answer).encode(), "application/json", self.fake.headers)

    # ---- writing
    def _send_json(self, status: int, payload: Any) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _send_raw(self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, status: int, content_type: str, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_stream(
        self, events: Iterator[dict[str, Any]], drop: int | None, *, space: bool, done: bool
    ) -> None:
        self._start_stream(200, "text/event-stream", self.fake.headers)
        prefix = b"data: " if space else b"data:"
        try:
            for sent, event in enumerate(events):
                if drop is not None and sent >= drop:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._write_chunk(prefix + json.dumps(event).encode() + b"\n\n")
                if self.fake.chunk_delay:
                    time.sleep(self.fake.chunk_delay)
            if done:
                self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            return  # the client went away mid-stream, as clients may

    def _send_scripted(self, scripted: _Scripted) -> None:
        if not scripted.streamed:
            self._send_raw(scripted.status, scripted.body, scripted.content_type, scripted.headers)
            return
        self._start_stream(scripted.status, scripted.content_type, scripted.headers)
        try:
            for line in scripted.body.splitlines(keepends=True):
                self._write_chunk(line)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
