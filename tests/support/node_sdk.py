"""A ChatKit backend on the npm `chatkit-node-backend-sdk`, run by `node` on loopback.

`tests/support/node/chatkit_sdk_server.mjs` serves the SDK's `ChatKitServer` (an echo responder
over an in-memory store) at `/chatkit` on Node's own `http` server; `make test` installs the locked
npm packages. A request whose body carries `metadata.gate = NAME` is held after its first text
delta until `release(NAME)`; `gate(NAME)` says where that stream stands ("waiting", "released",
"finished", or "closed" when its connection closed before the answer ended).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from tests.support.procs import PROJECT_ROOT, LoggedProcess, ProcessStartError, free_port, start_process, stop_process

SERVER_SCRIPT = PROJECT_ROOT / "tests" / "support" / "node" / "chatkit_sdk_server.mjs"


@dataclass(frozen=True)
class NodeSdkBackend:
    url: str
    process: LoggedProcess

    @property
    def chatkit_url(self) -> str:
        return f"{self.url}/chatkit"

    def gate(self, name: str) -> str | None:
        state: str | None = httpx.get(f"{self.url}/gates/{name}", trust_env=False, timeout=5).json()["state"]
        return state

    def release(self, name: str) -> None:
        httpx.post(f"{self.url}/gates/{name}/release", trust_env=False, timeout=5).raise_for_status()


@contextmanager
def running_node_sdk_backend() -> Iterator[NodeSdkBackend]:
    node = shutil.which("node")
    if node is None:
        raise ProcessStartError("node is not installed (scripts/system-deps.sh installs it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_process([node, str(SERVER_SCRIPT), str(port)], ready_url=f"{url}/ready", timeout=20)
    try:
        yield NodeSdkBackend(url=url, process=proc)
    finally:
        stop_process(proc)
