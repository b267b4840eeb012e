"""`server.workers = N`: worker processes on one socket, each serving, drained together, replaced.

Which worker holds a client's connection is read from the kernel: the gateway-side socket of the
connection (its peer port is the client's local port, in /proc/net/tcp) is an open file of exactly
one worker process (/proc/PID/fd). No test-only hook in the gateway.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config import ConfigError, build_config
from tests.support.chatkit import sse_events, user_input
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP

LIST = json.dumps({"type": "threads.list", "params": {}})
MAX_CONNECTIONS = 200  # to find every worker: the kernel hands each connection to one of them


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def socket_inode(local_port: int, peer_port: int) -> str:
    """The inode of the socket whose local port is `local_port` and whose peer's is `peer_port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, peer = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == local_port and int(peer, 16) == peer_port:
            return fields[9]
    raise AssertionError(f"no socket {local_port} <- {peer_port}")


def holder(pids: set[int], inode: str) -> int:
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


def worker_of(connection: http.client.HTTPConnection, gateway: RunningGateway) -> int:
    assert connection.sock is not None
    client_port: int = connection.sock.getsockname()[1]
    gateway_port = int(gateway.url.rsplit(":", 1)[1])
    return holder(children(gateway.process.pid), socket_inode(gateway_port, client_port))


def connect(gateway: RunningGateway) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]), timeout=30)
    connection.connect()
    return connection


def request(connection: http.client.HTTPConnection, method: str, path: str, body: str | None, token: str) -> bytes:
    headers = {**bearer(token), "content-type": "application/json"}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    assert response.status == 200, data
    return data


def one_connection_per_worker(gateway: RunningGateway, workers: int) -> dict[int, http.client.HTTPConnection]:
    """Open connections until each worker holds one; the others are closed."""
    held: dict[int, http.client.HTTPConnection] = {}
    for _ in range(MAX_CONNECTIONS):
        connection = connect(gateway)
        pid = worker_of(connection, gateway)
        if pid in held:
            connection.close()
        else:
            held[pid] = connection
        if len(held) == workers:
            return held
    raise AssertionError(f"{MAX_CONNECTIONS} connections reached {len(held)} of {workers} workers")


def requests_counted(metrics: bytes) -> float:
    pattern = rb'chatkit_gateway_requests_total\{op="threads.list",status="200"\} ([0-9.e+]+)'
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


def workers_config(backend: Backend, idp: LoopbackIdP, **server: Any) -> dict[str, Any]:
    return gateway_config(backend.url, idp, {"server": {"workers": 2, **server}})


@pytest.fixture
def two_workers(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    with start_gateway(workers_config(backend, session_idp, shutdown_grace_seconds=2)) as gateway:
        # `/readyz` answers once one worker is ready; the tests need both (a worker that dies
        # before it was ever ready stops the gateway instead of being replaced).
        workers = children(gateway.process.pid)
        assert len(workers) == 2
        for pid in workers:
            wait_for_log(gateway, f"(pid {pid}) ready")
        yield gateway


def test_two_workers_each_serve_requests_and_metrics_count_them_all(
    two_workers: RunningGateway, session_idp: LoopbackIdP
) -> None:
    token = user_token(session_idp, sub="workers-count")
    assert len(children(two_workers.process.pid)) == 2
    held = one_connection_per_worker(two_workers, 2)
    served = {pid: 0 for pid in held}
    before = {pid: requests_counted(request(c, "GET", "/metrics", None, token)) for pid, c in held.items()}
    assert len(set(before.values())) == 1  # whichever worker is asked, the same count
    for round_ in range(3):
        for pid, connection in held.items():
            for _ in range(round_ + 1 if pid == min(held) else 1):
                request(connection, "POST", "/chatkit", LIST, token)
                served[pid] += 1
    assert sorted(served.values()) == [3, 6]
    for pid, connection in held.items():
        after = requests_counted(request(connection, "GET", "/metrics", None, token))
        assert after - before[pid] == sum(served.values())  # both workers' requests, on either
        assert worker_of(connection, two_workers) == pid
        connection.close()


def open_streams(metrics: bytes) -> float:
    match = re.search(rb"\nchatkit_gateway_open_streams ([0-9.e+]+)", metrics)
    assert match, metrics[:2000]
    return float(match.group(1))


def test_open_streams_are_those_of_the_live_workers(two_workers: RunningGateway, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp, sub="workers-gauge")
    held = one_connection_per_worker(two_workers, 2)
    probes = one_connection_per_worker(two_workers, 2)
    try:
        for connection in held.values():
            stream_first_event(connection, token, "/forever")
        for probe in probes.values():
            assert open_streams(request(probe, "GET", "/metrics", None, token)) == 2
        victim = min(held)
        os.kill(victim, signal.SIGKILL)
        wait_for_log(two_workers, f"(pid {victim}) exited with -9; starting a replacement")
        survivor = probes[max(held)]
        assert open_streams(request(survivor, "GET", "/metrics", None, token)) == 1
    finally:
        for connection in (*held.values(), *probes.values()):
            connection.close()


def stream_first_event(connection: http.client.HTTPConnection, token: str, text: str) -> http.client.HTTPResponse:
    body = json.dumps({"type": "threads.create", "params": {"input": user_input(text)}})
    connection.request("POST", "/chatkit", body=body, headers={**bearer(token), "content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.read1(65536)  # the first event has arrived
    return response


def readiness(connection: http.client.HTTPConnection) -> tuple[int, Any]:
    connection.request("GET", "/readyz")
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_sigterm_drains_every_worker_and_ends_their_open_streams_with_the_error_event(
    two_workers: RunningGateway, session_idp: LoopbackIdP
) -> None:
    token = user_token(session_idp, sub="workers-drain")
    held = one_connection_per_worker(two_workers, 2)
    probes = one_connection_per_worker(two_workers, 2)
    try:
        streams = {pid: stream_first_event(connection, token, "/forever") for pid, connection in held.items()}
        os.kill(two_workers.process.pid, signal.SIGTERM)
        for pid, probe in probes.items():
            deadline = time.monotonic() + 2
            while (answer := readiness(probe))[0] != 503:  # at once, give or take the signal's delivery
                assert time.monotonic() < deadline, f"worker {pid} still ready"
                time.sleep(0.02)
            assert answer[1]["status"] == "draining"
        for pid, response in streams.items():
            events = sse_events(response.read())  # to the end: the 2 s grace is over, the worker ended it
            assert events[-1]["type"] == "error" and "restarting" in events[-1]["message"], pid
        assert two_workers.process.wait(20) == 0
        assert not children(two_workers.process.pid)
    finally:
        for connection in (*held.values(), *probes.values()):
            connection.close()


def wait_for_log(gateway: RunningGateway, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in gateway.log():
        assert time.monotonic() < deadline, f"{text!r} not logged"
        time.sleep(0.05)


def test_a_worker_that_dies_is_replaced_and_the_gateway_keeps_serving(
    two_workers: RunningGateway, session_idp: LoopbackIdP
) -> None:
    token = user_token(session_idp, sub="workers-restart")
    first = children(two_workers.process.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_for_log(two_workers, f"(pid {victim}) exited with -9; starting a replacement")
    replacement = (children(two_workers.process.pid) - first).pop()
    wait_for_log(two_workers, f"(pid {replacement}) ready")
    held = one_connection_per_worker(two_workers, 2)
    assert set(held) == (first - {victim}) | {replacement}
    for connection in held.values():
        request(connection, "POST", "/chatkit", LIST, token)
        connection.close()


@pytest.mark.parametrize(
    "ratelimit",
    [
        pytest.param({"requests_per_minute": 60}, id="requests_per_minute"),
        pytest.param({"messages_per_minute": 10}, id="messages_per_minute"),
        pytest.param({"max_concurrent_streams": 2}, id="max_concurrent_streams"),
    ],
)
def test_several_workers_with_a_per_process_rate_limit_store_are_refused_naming_the_key(
    ratelimit: dict[str, int],
) -> None:
    base = {"upstream": {"url": "http://127.0.0.1:9/chatkit"}, "auth": {"issuers": [_issuer()]}}
    with pytest.raises(ConfigError) as refused:
        build_config({**base, "server": {"workers": 2}, "ratelimit": ratelimit})
    assert "server.workers" in str(refused.value) and 'ratelimit.backend = "memory"' in str(refused.value)
    build_config({**base, "server": {"workers": 1}, "ratelimit": ratelimit})  # one process: one budget
    shared = {**ratelimit, "backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}
    build_config({**base, "server": {"workers": 2}, "ratelimit": shared})


@pytest.mark.parametrize(
    ("section", "in_memory", "shared", "key"),
    [
        pytest.param(
            "revocation",
            {"enabled": True},
            {"enabled": True, "store": "redis", "redis_url": "redis://127.0.0.1:6379/0"},
            'revocation.store = "memory"',
            id="revocation",
        ),
        pytest.param(
            "ownership", {"store": "memory"}, {"store": "sqlite"}, 'ownership.store = "memory"', id="ownership"
        ),
    ],
)
def test_several_workers_with_an_in_memory_store_are_refused_naming_the_key(
    section: str, in_memory: dict[str, Any], shared: dict[str, Any], key: str
) -> None:
    base = {"upstream": {"url": "http://127.0.0.1:9/chatkit"}, "auth": {"issuers": [_issuer()]}}
    with pytest.raises(ConfigError) as refused:
        build_config({**base, "server": {"workers": 2}, section: in_memory})
    assert "server.workers" in str(refused.value) and key in str(refused.value)
    build_config({**base, "server": {"workers": 2}, section: shared})
    build_config({**base, "server": {"workers": 2}, section: {**in_memory, "enabled": False}})  # nothing kept
    build_config({**base, "server": {"workers": 1}, section: in_memory})


def _issuer() -> dict[str, Any]:
    return {"issuer": "https://idp.example.com", "audiences": ["chatkit"]}
