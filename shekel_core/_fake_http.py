"""The HTTP side of the local test server: which route answers a request, and writing JSON, files and SSE."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from . import _fake_anthropic, _fake_openai, _fake_tasks
from ._fake_common import Answer

if TYPE_CHECKING:
    from .testing import FakeInferenceServer, _Scripted

#: The error body a scripted failure gets when the test gave none, by the protocol of its route.
_HF_LOADING = {"error": "Model fake/model is currently loading", "estimated_time": 20.0}
_OPENAI_ROUTES = ("responses", "embeddings", "images.generations", "audio.speech", "videos")
_ANTHROPIC_ROUTES = ("messages", "messages.count_tokens")
# A client hanging up is the client's business: the server just stops writing.
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def post_route(path: str, hub_models: Mapping[str, str]) -> str:
    """The route a POST takes, from its path alone."""
    path = path.rstrip("/")
    for suffix, route in (
        ("/chat/completions", "chat.completions"),
        ("/responses", "responses"),
        ("/embeddings", "embeddings"),
        ("/messages/count_tokens", "messages.count_tokens"),
        ("/messages", "messages"),
        ("/images/generations", "images.generations"),
        ("/audio/speech", "audio.speech"),
        ("/videos", "videos"),
    ):
        if path.endswith(suffix):
            return route
    task = _fake_tasks.task_from_path(path, hub_models)
    return "text-generation" if task in (None, "conversational") else task


def default_error(route: str, status: int) -> bytes:
    if route in _ANTHROPIC_ROUTES:
        return json.dumps(_fake_anthropic.error_body(status)).encode()
    if route in _OPENAI_ROUTES:
        return json.dumps(_fake_openai.error_body(status)).encode()
    return json.dumps(_HF_LOADING).encode()


class Handler(BaseHTTPRequestHandler):
    fake: FakeInferenceServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle holds the body for ~40 ms per request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read self.fake.requests
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._connections.discard(self.connection)
        with contextlib.suppress(*_GONE):  # the client went away before the last bytes were flushed
            super().finish()

    def handle(self) -> None:
        try:
            super().handle()
        except _GONE:
            self.close_connection = True  # the client hung up between requests

    # ---- reading
    def _path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def do_GET(self) -> None:
        path = self._path().rstrip("/")
        parts = [p for p in path.split("/") if p]
        headers = {k.lower(): v for k, v in self.headers.items()}
        if parts[:2] == ["api", "models"] and len(parts) > 2:
            model = "/".join(parts[2:])
            task = _fake_tasks.hub_task(self.fake.hub_models, model)
            route, answer = "hub.model_info", Answer.json(_fake_tasks.hub_model_info(model, task))
        elif parts[-1:] in (["health"], ["info"]):  # ``health_check`` and ``get_endpoint_info`` of any URL
            route, answer = "health", Answer.json({"status": "ok", "model_id": self.fake.model})
        elif parts[:1] == ["files"] and len(parts) == 2:
            media = (
                (_fake_tasks.png(), "image/png")
                if parts[1].endswith(".png")
                else (_fake_tasks.mp4(), "video/mp4")
            )
            route, answer = "files", Answer(body=media[0], content_type=media[1])
        elif "videos" in parts[:-1]:
            job = _fake_tasks.video_job(self.fake, parts[-1], self.fake.model)
            route, answer = "videos", Answer.json(job)
        else:
            route, answer = "", Answer.json({"error": f"no route {self.path}"}, status=404)
        self.fake._append(self._recorded("GET", None, b"", headers, route, answer))
        self._send_answer(answer, None, route)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        route = post_route(self._path(), self.fake.hub_models)
        streamed = isinstance(body, dict) and bool(body.get("stream"))
        scripted, drop = self.fake._take(streamed)
        if scripted is not None:
            self.fake._append(self._recorded("POST", body, raw, headers, route, None))
            if self.fake.latency:
                time.sleep(self.fake.latency)
            self._send_scripted(scripted, route)
            return
        answer = self._answer(route, body)
        if answer.status < 400:
            answer.headers.update(self._provider_headers(body))
        self.fake._append(self._recorded("POST", body, raw, headers, route, answer))
        if self.fake.latency:
            time.sleep(self.fake.latency)
        self._send_answer(answer, drop, route)

    def _recorded(
        self,
        method: str,
        body: Any,
        raw: bytes,
        headers: Mapping[str, str],
        route: str,
        answer: Answer | None,
    ) -> Any:
        from .testing import RecordedRequest

        return RecordedRequest(
            method,
            self.path,
            body,
            headers,
            route=route,
            input_tokens=answer.input_tokens if answer is not None else None,
            output_tokens=answer.output_tokens if answer is not None else None,
            content=raw,
        )

    def _provider_headers(self, body: Any) -> dict[str, str]:
        served = self.fake.served_by(self._path(), body)
        headers = {"x-inference-provider": served} if served else {}
        return {**headers, **self.fake.headers}

    def _answer(self, route: str, body: Any) -> Answer:
        fake = self.fake
        if route in _fake_tasks.TASKS and route != "text-generation":
            if body is not None and not isinstance(body, dict):
                return Answer(
                    status=422, body=b"Failed to deserialize the JSON body", content_type="text/plain"
                )
            return _fake_tasks.task_answer(fake, route, body)
        if not isinstance(body, dict):
            return Answer(
                status=422,
                body=b"Failed to deserialize the JSON body",
                content_type="text/plain; charset=utf-8",
            )
        if route == "chat.completions":
            return fake._chat(body)
        if route == "responses":
            return _fake_openai.responses_answer(fake, body)
        if route == "embeddings":
            return _fake_openai.embeddings_answer(fake, body)
        if route == "messages":
            return _fake_anthropic.messages_answer(fake, body)
        if route == "messages.count_tokens":
            return _fake_anthropic.count_tokens_answer(body)
        if route == "images.generations":
            return _fake_tasks.images_answer(fake, body)
        if route == "audio.speech":
            return _fake_tasks.speech_answer(body)
        if route == "videos":
            return _fake_tasks.video_answer(fake, body)
        return fake._text_generation(body)

    # ---- writing
    def _send_answer(self, answer: Answer, drop: int | None, route: str) -> None:
        if answer.events is None:
            self._send_raw(answer.status, answer.body or b"", answer.content_type, answer.headers)
            return
        tgi = route == "text-generation"  # TGI writes ``data:`` without a space and no ``[DONE]``
        self._send_stream(
            answer.events,
            drop,
            content_type=answer.content_type,
            headers=answer.headers,
            prefix=b"data:" if tgi else b"data: ",
            done=self.fake.send_done and route == "chat.completions",
        )

    def _send_raw(self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] = {}) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except _GONE:
            self.close_connection = True  # the client went away before reading its answer

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
        self,
        events: Iterator[tuple[str | None, Mapping[str, Any] | str]],
        drop: int | None,
        *,
        content_type: str,
        headers: Mapping[str, str],
        prefix: bytes,
        done: bool,
    ) -> None:
        try:
            self._start_stream(200, content_type, headers)
            for sent, (name, data) in enumerate(events):
                if drop is not None and sent >= drop:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                line = b"" if name is None else f"event: {name}\n".encode()
                text = data if isinstance(data, str) else json.dumps(data)
                self._write_chunk(line + prefix + text.encode() + b"\n\n")
                if self.fake.chunk_delay:
                    time.sleep(self.fake.chunk_delay)
            if done:
                self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (*_GONE, OSError):
            self.close_connection = True  # the client went away mid-stream, as clients may

    def _send_scripted(self, scripted: _Scripted, route: str) -> None:
        body = scripted.body if scripted.body is not None else default_error(route, scripted.status)
        if not scripted.streamed:
            self._send_raw(scripted.status, body, scripted.content_type, scripted.headers)
            return
        try:
            self._start_stream(scripted.status, scripted.content_type, scripted.headers)
            for line in body.splitlines(keepends=True):
                self._write_chunk(line)
            self.wfile.write(b"0\r\n\r\n")
        except (*_GONE, OSError):
            self.close_connection = True
