"""A real ``redis-server`` for the tests: on a free loopback port, in a temporary folder, with no persistence.

When ``redis-server`` is not installed the tests that need it skip, except under CI (``CI`` or
``SHEKEL_REQUIRE_REDIS`` set), where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def required() -> bool:
    return any(os.environ.get(name, "").strip() not in ("", "0") for name in ("CI", "SHEKEL_REQUIRE_REDIS"))


def binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None
    )


def missing(why: str) -> None:
    """Skip, or fail under CI."""
    if required():
        pytest.fail(
            f"{why}, and CI requires it (CI / SHEKEL_REQUIRE_REDIS is set): apt-get install redis-server"
        )
    pytest.skip(why)


_NO_PERSISTENCE = ("--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning")


def _unix(folder: str) -> tuple[str, ...]:
    return ("--unixsocket", f"{folder}/redis.sock", "--unixsocketperm", "700")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _needed() -> str:
    """The ``redis-server`` binary (with redis-py importable); else skips, or fails when CI requires them."""
    exe = binary()
    if exe is None:
        missing("redis-server is not installed")
        raise AssertionError  # unreachable: missing() raises
    try:
        import redis  # noqa: F401
    except ImportError:
        missing("redis-py is not installed")
        raise AssertionError from None
    return exe


def start_server(port: int, folder: str) -> subprocess.Popen[bytes] | None:
    """A ``redis-server`` on ``port``, answering, with no persistence and a unix socket in ``folder``;
    None when it exited first (the port was taken meanwhile)."""
    import redis

    process = subprocess.Popen(
        [
            _needed(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            folder,
            *_NO_PERSISTENCE,
            *_unix(folder),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        for _ in range(200):
            if process.poll() is not None:
                return None
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                time.sleep(0.02)
    finally:
        client.close()
    stop_server(process)
    pytest.fail("redis-server did not answer within 4 s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def redis_server() -> Iterator[str]:
    """A running server's URL (``redis://127.0.0.1:<port>/0``); stopped and its folder removed on exit."""
    _needed()
    with tempfile.TemporaryDirectory(prefix="shekel-redis-") as folder:
        for _attempt in range(5):
            port = free_port()
            process = start_server(port, folder)
            if process is not None:
                break
        else:
            pytest.fail("redis-server could not start on a free port")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_server(process)
            if process.stdout is not None:
                process.stdout.close()
