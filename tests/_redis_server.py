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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """A running server's URL (``redis://127.0.0.1:<port>/0``); stopped and its folder removed on exit."""
    exe = binary()
    if exe is None:
        missing("redis-server is not installed")
        raise AssertionError  # unreachable: missing() raises
    try:
        import redis
    except ImportError:
        missing("redis-py is not installed")
        raise AssertionError from None

    with tempfile.TemporaryDirectory(prefix="shekel-redis-") as folder:
        for _attempt in range(5):
            port = _free_port()
            process = subprocess.Popen(
                [
                    exe,
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
            for _ in range(200):
                if process.poll() is not None:
                    break  # the port was taken meanwhile: try another
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            else:
                process.kill()
                process.wait()
                pytest.fail("redis-server did not answer within 4 s")
            client.close()
            if process.poll() is None:
                break
        else:
            pytest.fail("redis-server could not start on a free port")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
