"""Pytest fixtures for the real ChatKit test backend (`tests.support.backend`).

Load with `pytest_plugins = ["tests.support.fixtures"]`. `backend` is one subprocess per session;
`clean_backend` is the same process with its recorded requests, events and store cleared.
Tests that need other settings (a slower delay, a public base pointing at the gateway) use
`start_backend()` directly.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.procs import free_port, process_log, start_process, stop_process

DEFAULT_DELAY = 0.05


@dataclass(frozen=True)
class Backend:
    """A running backend and the `/_debug` views of it."""

    url: str
    process: subprocess.Popen[bytes]

    @property
    def chatkit_url(self) -> str:
        return f"{self.url}/chatkit"

    @property
    def uploads_url(self) -> str:
        """Where the backend takes uploads: a prefix of its own, not above `/chatkit`."""
        return f"{self.url}/uploads/"

    def requests(self) -> list[dict[str, Any]]:
        """Every non-debug request received: method, path, raw_path, query_string, headers, body, json,
        body_length."""
        result: list[dict[str, Any]] = self._get("/_debug/requests")
        return result

    def reset(self) -> None:
        response = httpx.post(f"{self.url}/_debug/reset", trust_env=False)
        response.raise_for_status()

    def thread(self, thread_id: str) -> dict[str, Any]:
        """`{"thread": ..., "items": [...]}` as stored, hidden items included."""
        result: dict[str, Any] = self._get(f"/_debug/threads/{thread_id}")
        return result

    def events(self) -> list[dict[str, Any]]:
        """Notable server-side events, e.g. `{"type": "stream_cancelled", "thread_id": ...}`."""
        result: list[dict[str, Any]] = self._get("/_debug/events")
        return result

    def attachment(self, attachment_id: str) -> dict[str, Any]:
        """`{"size": n, "sha256": hex}` of the stored bytes."""
        result: dict[str, Any] = self._get(f"/_debug/attachments/{attachment_id}")
        return result

    def log(self) -> str:
        return process_log(self.process)

    def _get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", trust_env=False)
        response.raise_for_status()
        return response.json()


@contextmanager
def start_backend(
    delay: float = DEFAULT_DELAY, public_base: str | None = None, otlp_endpoint: str | None = None
) -> Iterator[Backend]:
    """Run a backend subprocess for the duration of the block."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "tests.support.backend", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--delay", str(delay)]
    if public_base is not None:
        args += ["--public-base", public_base]
    if otlp_endpoint is not None:
        args += ["--otlp-endpoint", otlp_endpoint]
    proc = start_process(args, ready_url=f"{url}/_debug/health")
    try:
        yield Backend(url=url, process=proc)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    with start_backend(delay=DEFAULT_DELAY) as running:
        yield running


@pytest.fixture
def clean_backend(backend: Backend) -> Backend:
    backend.reset()
    return backend
