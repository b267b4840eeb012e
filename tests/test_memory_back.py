"""A closed connection's objects go by reference counting, not at the next full collection.

Left in reference cycles, what a stream held (both sides' protocols, transports and parsers, the
response cycles, the exchange's error) stays until the collector's oldest generation runs, which a
process gone quiet after a burst of streams does not do: its memory is not given back
(docs/performance.md, "Memory back"). Here the gateway runs as `serve` runs it (`GatewayServer`:
uvicorn, uvloop, the gateway's protocol and transport) on a thread of the test process, in front
of the real ChatKit backend. With the collector off, clients stream replies, read JSON answers,
upload a file, ask the forward-auth endpoint, leave in the middle of a stream, and get refused (a
bad token, a body over the limit); once every connection is closed, a collection that keeps what
it finds must find nothing of the gateway's, the server's, the loop's or the parsers' unreachable.

Freed, that memory goes back to the system only on an allocator that returns partly used memory:
the container image runs the gateway on jemalloc (`gateway/allocator.py`), and the gateway says
at start-up which allocator it runs on.
"""

from __future__ import annotations

import collections
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import allocator
from gateway.config import build_config
from gateway.server import GatewayServer
from tests.support.chatkit import create_thread, open_stream_then_drop, post
from tests.support.fixtures import Backend
from tests.support.gateway import bearer, gateway_config, merge, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port
from tests.test_workers import children

# The modules whose objects a connection makes in the gateway (not httpx: the test's own clients
# are httpx's, and its sync response objects are left in cycles of their own).
WATCHED_MODULES = ("gateway", "uvicorn", "uvloop", "httptools", "asyncio", "_asyncio")
BODY_LIMIT = 64 * 1024


@contextmanager
def gateway_on_a_thread(config: dict[str, Any]) -> Iterator[tuple[str, GatewayServer]]:
    port = free_port()
    server = GatewayServer(build_config(merge(config, {"server": {"port": port}})))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)


def unreachable_kinds() -> collections.Counter[str]:
    """What a full collection finds unreachable now, of the watched modules, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return collections.Counter({k: n for k, n in kinds.items() if k.split(".", 1)[0] in WATCHED_MODULES})


def wait_for_no_connections(server: GatewayServer) -> None:
    deadline = time.monotonic() + 15
    while server.server_state.connections:
        assert time.monotonic() < deadline, "the gateway still holds client connections"
        time.sleep(0.02)
    time.sleep(0.3)  # the upstream side's closes, which follow the client's


def test_connections_of_every_kind_leave_nothing_for_the_collector(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp)
    config = gateway_config(backend.url, session_idp, {"server": {"max_body_bytes": BODY_LIMIT}})
    with gateway_on_a_thread(config) as (url, server):
        with httpx.Client(base_url=url, headers=bearer(token), trust_env=False, timeout=30) as client:
            create_thread(client, "warm up")  # start-up's one-time objects are made before the count
        wait_for_no_connections(server)
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                with httpx.Client(base_url=url, headers=bearer(token), trust_env=False, timeout=30) as client:
                    thread_id, events = create_thread(client, "hello")  # a streamed reply, read to its end
                    assert events[-1]["type"] != "error"
                    listed = post(client, "threads.list", {"limit": 5})  # a JSON answer, filtered
                    assert listed.status_code == 200 and thread_id in listed.text
                    refused = post(client, "threads.list", {}, headers={"authorization": "Bearer nope"})
                    assert refused.status_code == 401
                    too_large = post(client, "threads.list", {}, padding="a" * BODY_LIMIT)
                    assert too_large.status_code == 413
                    upload = {"file": ("a.txt", b"x" * 50_000, "text/plain")}
                    uploaded = client.post("/chatkit/uploads/files", files=upload)
                    assert uploaded.status_code == 200, uploaded.text
                    assert client.get("/auth/verify").status_code == 200  # forward-auth
                port = int(url.rsplit(":", 1)[1])
                open_stream_then_drop("127.0.0.1", port, token)  # the client leaves mid-stream
            wait_for_no_connections(server)
            left = unreachable_kinds()
        finally:
            gc.enable()
    assert not left, f"left in reference cycles: {dict(left)}"


def jemalloc() -> str:
    library = allocator.find_jemalloc()
    assert library is not None, "libjemalloc2 is installed by `make test` (scripts/system-deps.sh)"
    return library


@pytest.mark.parametrize(
    ("preload", "pythonmalloc", "expected"),
    [
        (False, None, "pymalloc"),
        (True, "malloc", "jemalloc"),
        (True, None, "pymalloc, jemalloc unused"),
        (False, "malloc", "malloc"),
    ],
)
def test_the_allocator_in_use_is_told_from_the_process_itself(
    preload: bool, pythonmalloc: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in allocator.ENVIRONMENT}
    if preload:
        env["LD_PRELOAD"] = jemalloc()
    if pythonmalloc is not None:
        env["PYTHONMALLOC"] = pythonmalloc
    code = "from gateway import allocator; print(allocator.in_use())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected


def test_a_gateway_started_as_the_image_starts_it_runs_on_jemalloc_and_says_so(
    backend: Backend, session_idp: LoopbackIdP
) -> None:
    env = allocator.jemalloc_environment(jemalloc())
    with start_gateway(gateway_config(backend.url, session_idp), env=env) as running:
        with httpx.Client(base_url=running.url, headers=bearer(user_token(session_idp)), trust_env=False) as client:
            thread_id, _ = create_thread(client, "hello")
            assert thread_id in post(client, "threads.list", {}).text
        maps = Path(f"/proc/{running.process.pid}/maps").read_text()
        assert "libjemalloc" in maps
        assert "memory allocator: jemalloc" in running.log()


def test_a_gateway_on_pythons_own_allocator_says_its_memory_is_kept(backend: Backend, session_idp: LoopbackIdP) -> None:
    with start_gateway(gateway_config(backend.url, session_idp), env={"PYTHONMALLOC": "pymalloc"}) as running:
        assert "memory allocator: pymalloc; memory freed after a burst is kept for reuse" in running.log()


def thread_names(pid: int) -> list[str]:
    tasks = Path(f"/proc/{pid}/task")
    return [(task / "comm").read_text().strip() for task in tasks.iterdir()]


def test_forked_workers_purge_in_the_background_as_one_process_does(backend: Backend, session_idp: LoopbackIdP) -> None:
    """jemalloc turns its background threads off in a forked child; each worker turns them back on."""
    config = gateway_config(backend.url, session_idp, {"server": {"workers": 2}})
    with start_gateway(config, env=allocator.jemalloc_environment(jemalloc())) as running:
        workers = children(running.process.pid)
        assert len(workers) == 2
        deadline = time.monotonic() + 10
        while not all("jemalloc_bg_thd" in thread_names(pid) for pid in workers):
            assert time.monotonic() < deadline, {pid: thread_names(pid) for pid in workers}
            time.sleep(0.1)
        assert "jemalloc_bg_thd" in thread_names(running.process.pid)  # the supervisor's own
