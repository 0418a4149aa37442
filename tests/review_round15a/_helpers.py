"""Helpers of review round 15a: a redis-server the test stops (the store goes down) and starts again."""

from __future__ import annotations

from pathlib import Path

import pytest

from .._redis_server import free_port, start_server, stop_server

PRICES = {"input": 1.0, "output": 2.0}  # $0.001 per input token, $0.002 per output token
MESSAGES = [{"role": "user", "content": "hi there"}]


class Restartable:
    """A redis-server on a fixed loopback port that a test stops and starts again (empty: no persistence)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for _attempt in range(5):
            self.port = free_port()
            self.process = start_server(self.port, str(folder))
            if self.process is not None:
                break
        else:
            pytest.fail("redis-server could not start on a free port")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            self.process = None

    def start(self) -> None:
        self.process = start_server(self.port, str(self.folder))
        assert self.process is not None, f"port {self.port} was taken while redis-server was down"
