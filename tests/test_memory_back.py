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
"""

from __future__ import annotations

import collections
import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from gateway.config import build_config
from gateway.server import GatewayServer
from tests.support.chatkit import create_thread, open_stream_then_drop, post
from tests.support.fixtures import Backend
from tests.support.gateway import bearer, gateway_config, merge, user_token
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port

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
