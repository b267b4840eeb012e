"""A real `redis-server` for the tests: a free loopback port, no persistence, stopped by its PID.

Use `start_redis()` for a server of your own (one you may stop and restart mid-test), or load this
module as a plugin (`pytest_plugins = ["tests.support.redis"]`) for the session's shared
`redis_server`; tests sharing it keep apart by using their own keys (e.g. unique user ids).
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
from pathlib import Path

import pytest

from tests.support.procs import LoggedProcess, ProcessStartError, free_port, process_log, stop_process

READY_TIMEOUT_SECONDS = 10.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise ProcessStartError("redis-server is not installed (`make test` installs it via scripts/system-deps.sh)")
    return found


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:`port` (inline command, RESP reply)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A `redis-server` on 127.0.0.1:`port` that can be stopped and started again on the same port."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: LoggedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning"]
        fd, log_name = tempfile.mkstemp(prefix="chatkit-gateway-redis-", suffix=".log")
        try:
            proc = LoggedProcess(args, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT)
        finally:
            os.close(fd)  # the child holds its own copy
        proc.log_path = Path(log_name)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ping(self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = process_log(proc)
                stop_process(proc)
                raise ProcessStartError(f"redis-server on port {self.port} did not answer PING:\n{log}")
            time.sleep(0.02)
        self.process = proc

    def stop(self) -> None:
        """Stop the server (SIGTERM to its PID); its data is gone, as after a crash without persistence."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@contextmanager
def start_redis() -> Iterator[RedisServer]:
    """A running server on a free port, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-redis-") as workdir:
        server = RedisServer(free_port(), Path(workdir))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session; do not stop it (use `start_redis()` for that)."""
    with start_redis() as server:
        yield server
