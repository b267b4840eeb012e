"""Start and stop the real peers the tests talk to (backend, gateway, JWKS server) as subprocesses.

Each process runs from the project root with stdout and stderr in its own temporary log file;
`process_log()` reads it, and start-up failures quote it. Readiness is an HTTP 200 from
`ready_url`, polled on loopback only (`trust_env=False`: no proxy from the environment).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_SECONDS = 10.0


class ProcessStartError(RuntimeError):
    """The process exited, or did not answer its ready URL in time; the message holds its log."""


class LoggedProcess(subprocess.Popen[bytes]):
    """A `Popen` that remembers where its output goes."""

    log_path: Path


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the usual race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_log(proc: subprocess.Popen[bytes]) -> str:
    path = getattr(proc, "log_path", None)
    if path is None or not Path(path).exists():
        return ""
    return Path(path).read_text(encoding="utf-8", errors="replace")


def start_process(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    ready_url: str,
    timeout: float = 20.0,
    verify: ssl.SSLContext | bool = True,
) -> LoggedProcess:
    """Start `args` in the project root and wait until `ready_url` answers 200.

    `env` is layered over the current environment; `verify` is for an https `ready_url`. Raises
    `ProcessStartError` with the log if the process exits first or is not ready within `timeout`
    seconds (it is then stopped).
    """
    fd, log_name = tempfile.mkstemp(prefix="chatkit-gateway-test-", suffix=".log")
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        proc = LoggedProcess(
            list(args), cwd=PROJECT_ROOT, env=child_env, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT
        )
    finally:
        os.close(fd)  # the child holds its own copy
    proc.log_path = Path(log_name)
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0, verify=verify) as client:
        while True:
            returncode = proc.poll()
            if returncode is not None:
                log = process_log(proc)
                stop_process(proc)
                raise ProcessStartError(f"{' '.join(args)} exited with {returncode} before ready:\n{log}")
            try:
                if client.get(ready_url).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                log = process_log(proc)
                stop_process(proc)
                raise ProcessStartError(f"{' '.join(args)} not ready at {ready_url} after {timeout} s:\n{log}")
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, up to 10 s of grace, then SIGKILL; signals go to this PID only. Returns the exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    path = getattr(proc, "log_path", None)
    if path is not None:
        Path(path).unlink(missing_ok=True)
    return proc.returncode


@contextmanager
def node_openid_server(script: Path, settings: dict[str, Any]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A node `oidc-provider` script of tests/support/node on loopback, given its JSON settings
    (with `port`); (its URL, its process) once its discovery document answers, stopped after."""
    url = f"http://127.0.0.1:{settings['port']}"
    proc = start_process(
        ["node", str(script), json.dumps(settings)], ready_url=f"{url}/.well-known/openid-configuration", timeout=30
    )
    try:
        yield url, proc
    finally:
        stop_process(proc)
