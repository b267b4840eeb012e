"""What thread ownership costs: the gateway's CPU per request with it off, on SQLite and on Redis.

Three more gateways are started in the run, each from the run's own gateway config with only
`[ownership]` changed, in front of the same upstream, and measured in turns with the same wrk
load: `threads.get_by_id` naming a thread the user owns (the check, from the in-process cache once
the first request has recorded it) and `threads.list` whose answer holds that thread (the check
of the answer). The Redis gateway talks to a `redis-server` started for the run (its CPU is not
counted: it is another process, as the upstream is). An in-process figure shows what one cached
check costs on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from bench import measure, peers
from gateway.chatkit import parse_chatkit_request
from gateway.config import OwnershipConfig
from gateway.ownership import Owners, OwnershipPolicy
from gateway.ownership.store import MemoryStore

THREAD = "thr_bench"  # the thread the bench upstream lists
GET_BODY = json.dumps({"type": "threads.get_by_id", "params": {"thread_id": THREAD}})
CACHED_CHECKS = 100_000
ROUNDS = 3


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A `redis-server` on a free loopback port (its URL), or None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = peers.free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def _gateway(base: dict[str, Any], folder: Path, name: str, ownership: dict[str, Any]) -> peers.Peer:
    port = peers.free_port()
    config = {**base, "server": {**base["server"], "port": port}, "ownership": ownership}
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    args = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
    return peers.start(f"gateway-{name}", args, f"http://127.0.0.1:{port}", "/readyz", env=peers.gateway_env())


def cached_check_us() -> float:
    """One ownership check of a request naming a thread the user owns, from the cache (µs)."""
    policy = OwnershipPolicy(OwnershipConfig(store="memory"), Owners(MemoryStore(), cache_size=10))
    request = parse_chatkit_request(GET_BODY.encode())

    async def checks() -> float:
        await policy.owners.claim(THREAD, "bench-user")
        started = time.perf_counter_ns()
        for _ in range(CACHED_CHECKS):
            await policy.check("bench-user", request)
        return (time.perf_counter_ns() - started) / CACHED_CHECKS / 1000

    return asyncio.run(checks())


def run(
    gateway: peers.Peer, signer: peers.Signer, *, seconds: float, connections: int = 16, rounds: int = ROUNDS
) -> list[str]:
    """Markdown lines: the table and the cached-check figure."""
    base = tomllib.loads(Path(gateway.process.args[-1]).read_text())  # type: ignore[index]
    token = signer.token()
    samples: dict[str, tuple[list[float], list[float]]] = {}
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chatkit-gateway-bench-ownership-")))
        redis = stack.enter_context(redis_server())
        variants: list[tuple[str, dict[str, Any]]] = [
            ("off", {"enabled": False}),
            ("sqlite", {"store": "sqlite", "sqlite_path": str(folder / "owners.sqlite3")}),
        ]
        if redis is not None:
            variants.append(("redis", {"store": "redis", "redis_url": redis}))
        started: list[tuple[str, peers.Peer]] = []
        for name, ownership in variants:
            peer = _gateway(base, folder, name, ownership)
            stack.callback(peers.stop, peer)
            # The first request presents the thread: recorded for the user (unknown = "claim").
            first = httpx.post(f"{peer.url}/chatkit", content=GET_BODY, headers=_headers(token), trust_env=False)
            assert first.status_code == 200, first.text
            measure.wrk(f"{peer.url}/chatkit", token, connections=4, seconds=1, pids=peer.pids, body=GET_BODY)
            started.append((name, peer))
            samples[name] = ([], [])
        # Rounds that take turns, medians over them: a shared machine's load drifts during a run,
        # and measuring one variant after the other would charge the drift to one of them.
        for _ in range(rounds):
            for name, peer in started:
                url = f"{peer.url}/chatkit"
                get = measure.wrk(url, token, connections=connections, seconds=seconds, pids=peer.pids, body=GET_BODY)
                listed = measure.wrk(url, token, connections=connections, seconds=seconds, pids=peer.pids)
                assert get.errors == listed.errors == 0
                samples[name][0].append(get.cpu_us_per_request)
                samples[name][1].append(listed.cpu_us_per_request)
    figures = {name: (statistics.median(gets), statistics.median(lists)) for name, (gets, lists) in samples.items()}
    off = figures["off"]
    out = [
        f"| ownership | CPU µs per `threads.get_by_id` (c={connections}) | added | CPU µs per `threads.list` | added |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, (get_us, list_us) in figures.items():
        out.append(f"| {name} | {get_us:,.0f} | {get_us - off[0]:+,.0f} | {list_us:,.0f} | {list_us - off[1]:+,.0f} |")
    if "redis" not in figures:
        out.append("| redis | – (redis-server is not installed) | | | |")
    out += ["", f"Medians of {rounds} rounds. One cached check on its own, in-process: {cached_check_us():.2f} µs."]
    return out


def _headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}
