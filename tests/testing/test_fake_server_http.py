"""The server's own HTTP manners: clients that hang up, connections left open, what it records."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time

import pytest

from shekel.testing import FakeInferenceServer

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 2}


def _hang_up_before_the_answer(server: FakeInferenceServer, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # SO_LINGER 0: closing sends a reset, so the server's write fails as it would with a vanished client.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
    time.sleep(server.latency * 3)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_prints_no_traceback(capfd: pytest.CaptureFixture[str], stream: bool) -> None:
    with FakeInferenceServer(latency=0.05) as server:
        _hang_up_before_the_answer(server, {**CHAT, "stream": stream})
        assert server.request_count == 1
        # The server still answers the next client.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            connection.request(
                "POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"}
            )
            assert connection.getresponse().status == 200
        finally:
            connection.close()
    assert "Traceback" not in capfd.readouterr().err


def test_stop_ends_connections_clients_keep_alive() -> None:
    server = FakeInferenceServer().start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", "/health")
        assert connection.getresponse().read()
        assert len(server._connections) == 1  # kept alive, its handler thread waiting for the next request
        server.stop()
        assert connection.sock is not None
        assert connection.sock.recv(1) == b""  # the server's side is closed
    finally:
        connection.close()
    assert server._connections == set()


def test_requests_record_route_tokens_and_raw_content(server: FakeInferenceServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"}
        )
        connection.getresponse().read()
        connection.request(
            "POST", "/", json.dumps({"inputs": "one two three", "parameters": {"max_new_tokens": 4}})
        )
        connection.getresponse().read()
    finally:
        connection.close()
    chat, generation = server.requests
    assert (chat.route, chat.input_tokens, chat.output_tokens) == ("chat.completions", 5, 2)
    assert (generation.route, generation.input_tokens, generation.output_tokens) == ("text-generation", 3, 4)
    assert json.loads(chat.content) == CHAT


def test_hub_model_info_answers_from_hub_models(server: FakeInferenceServer) -> None:
    server.hub_models["org/embedder"] = "feature-extraction"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", "/api/models/org/embedder?expand=inferenceProviderMapping")
        info = json.loads(connection.getresponse().read())
        connection.request("GET", "/api/models/org/chat-model")
        chat = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert info["pipeline_tag"] == "feature-extraction"
    assert next(iter(info["inferenceProviderMapping"])) == "hf-inference"
    assert info["inferenceProviderMapping"]["together"] == {
        "status": "live",
        "providerId": "org/embedder",
        "task": "feature-extraction",
    }
    assert chat["pipeline_tag"] == "text-generation"
    assert chat["inferenceProviderMapping"]["together"]["task"] == "conversational"


def test_the_existing_default_failure_body_is_unchanged(server: FakeInferenceServer) -> None:
    server.fail_next()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        assert answer.status == 503
        assert json.loads(answer.read()) == {
            "error": "Model fake/model is currently loading",
            "estimated_time": 20.0,
        }
    finally:
        connection.close()
