"""Records outlive the gateway (a restart, `kill -9` right after the creating stream), and a
record that cannot be written is never replaced by relaying the id it would have protected."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import tomli_w

from tests.ownership.conftest import refused_unseen, signed_in
from tests.support.chatkit import CHATKIT_PATH, post, sse_events, user_input
from tests.support.checks import assert_error
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token
from tests.support.procs import free_port, start_process, stop_process

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP


@contextmanager
def sqlite_gateway(backend: Backend, idp: LoopbackIdP, path: Path, **ownership: Any) -> Iterator[RunningGateway]:
    config = gateway_config(backend.url, idp, {"ownership": {"sqlite_path": str(path), **ownership}})
    with start_gateway(config) as running:
        yield running


def owners_on_disk(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, owner FROM owners").fetchall())


def first_event_then(client: httpx.Client, then: Any) -> str:
    """Start a slow `threads.create`, call `then()` as soon as its first event has arrived: the thread id."""
    body = {"type": "threads.create", "params": {"input": user_input("/slow 20")}}
    with client.stream("POST", CHATKIT_PATH, json=body) as response:
        buffer = b""
        for chunk in response.iter_raw():
            buffer += chunk
            if b"\n\n" in buffer:
                break
        then()
    event = json.loads(buffer.split(b"\n\n", 1)[0].removeprefix(b"data: "))
    assert event["type"] == "thread.created"
    thread_id: str = event["thread"]["id"]
    return thread_id


@pytest.mark.parametrize("stop", ["sigterm-after-the-stream", "sigkill-at-the-first-event"])
def test_records_survive_the_gateway_even_killed_right_after_the_new_thread_id_reached_the_client(
    stop: str, clean_backend: Backend, session_idp: LoopbackIdP, tmp_path: Path
) -> None:
    path = tmp_path / "owners.sqlite3"
    with sqlite_gateway(clean_backend, session_idp, path, unknown="deny") as first:
        with signed_in(first, session_idp, "alice") as alice:
            if stop == "sigkill-at-the-first-event":
                thread = first_event_then(alice, lambda: os.kill(first.process.pid, signal.SIGKILL))
                first.process.wait()
            else:
                thread = sse_events(post(alice, "threads.create", {"input": user_input("hi")}).content)[0]
                thread = thread["thread"]["id"]
    assert owners_on_disk(path) == {thread: "alice"}

    with sqlite_gateway(clean_backend, session_idp, path, unknown="deny") as second:
        with signed_in(second, session_idp, "alice") as alice, signed_in(second, session_idp, "bob") as bob:
            assert post(alice, "threads.get_by_id", {"thread_id": thread}).status_code == 200
            assert_error(
                refused_unseen(clean_backend, bob, "threads.get_by_id", {"thread_id": thread}), 404, "not_found"
            )


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another process's write transaction on the file: reads go on (WAL), writes wait and fail."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def test_a_new_thread_that_cannot_be_recorded_ends_the_stream_with_an_error_instead_of_its_id(
    clean_backend: Backend, session_idp: LoopbackIdP, tmp_path: Path
) -> None:
    path = tmp_path / "owners.sqlite3"
    with sqlite_gateway(clean_backend, session_idp, path) as gateway, signed_in(gateway, session_idp, "alice") as alice:
        with write_locked(path):
            response = post(alice, "threads.create", {"input": user_input("hi")})
        assert response.status_code == 200
        events = sse_events(response.content)
        assert [event["type"] for event in events] == ["error"]
        assert events[0]["allow_retry"] is True
        # The backend made the thread, but its id never reached the client.
        assert [r for r in clean_backend.requests() if (r["json"] or {}).get("type") == "threads.create"]
        assert b"thr_" not in response.content
        assert owners_on_disk(path) == {}
        # Once the store takes writes again, so does the gateway.
        assert sse_events(post(alice, "threads.create", {"input": user_input("hi")}).content)[-1]["type"] != "error"


def test_an_attachment_that_cannot_be_recorded_gets_503_instead_of_its_id(
    clean_backend: Backend, session_idp: LoopbackIdP, tmp_path: Path
) -> None:
    path = tmp_path / "owners.sqlite3"
    with sqlite_gateway(clean_backend, session_idp, path) as gateway, signed_in(gateway, session_idp, "alice") as alice:
        with write_locked(path):
            response = post(alice, "attachments.create", {"name": "a.txt", "size": 1, "mime_type": "text/plain"})
        assert_error(response, 503, "ownership_unavailable")
        assert b"atc_" not in response.content


def test_a_store_that_cannot_be_opened_keeps_the_gateway_unready_and_requests_out(
    clean_backend: Backend, session_idp: LoopbackIdP, tmp_path: Path
) -> None:
    port = free_port()
    unusable = tmp_path / "no-such-folder" / "owners.sqlite3"
    config = gateway_config(
        clean_backend.url, session_idp, {"server": {"port": port}, "ownership": {"sqlite_path": str(unusable)}}
    )
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(config))
    url = f"http://127.0.0.1:{port}"
    # Ready means alive here: /healthz answers while /readyz is 503.
    process = start_process(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)], ready_url=f"{url}/healthz"
    )
    try:
        ready = httpx.get(f"{url}/readyz", trust_env=False)
        assert ready.status_code == 503
        assert ready.json()["reason"] == "the ownership store (sqlite) cannot be reached"
        with httpx.Client(base_url=url, headers=bearer(user_token(session_idp, "alice")), trust_env=False) as alice:
            create = {"input": user_input("hi")}
            assert_error(refused_unseen(clean_backend, alice, "threads.create", create), 503, "ownership_unavailable")
    finally:
        stop_process(process)
