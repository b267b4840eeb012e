"""Client faults against the gateway as users run it: stream storms, slow bodies, slow headers.

- A storm of 1,000 streams opened then dropped: the gateway's file descriptors and its connections
  to the upstream return to their baseline, and it keeps serving.
- Slow bodies are bounded by `server.body_timeout_seconds` (408): in total for JSON bodies, as the
  longest pause for uploads.
- Slow headers are NOT bounded by the gateway: uvicorn has no header-read deadline and its
  `timeout_keep_alive` only runs between requests (security-anchors.md §4.7). What is asserted is
  that half-open connections cost a file descriptor each and nothing else (other clients are served
  meanwhile); the bound belongs to a front proxy (docs/hardening.md).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from bench.load import Storm
from bench.measure import established_to, fd_count, wait_until
from tests.support.chatkit import sse_events
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port, start_process, stop_process
from tests.support.rawhttp import RawResponse, address_of, is_closed, read_response, request_bytes

STORM_STREAMS = 1000
BODY_TIMEOUT = 2.0
MARGIN = 1.5
KEEP_ALIVE = 5.0  # gateway/server.py: uvicorn timeout_keep_alive
HALF_OPEN = 100
BODY = b'{"type":"threads.list","params":{}}'


@pytest.fixture(scope="module")
def bench_upstream() -> Iterator[tuple[str, int]]:
    """`bench.upstream`: a light ChatKit-shaped upstream whose `{"idle": true}` streams cost almost nothing."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_process([sys.executable, "-m", "bench.upstream", "--port", str(port)], ready_url=f"{url}/ready")
    try:
        yield url, port
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def storm_gateway(bench_upstream: tuple[str, int], session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    with start_gateway(gateway_config(bench_upstream[0], session_idp)) as running:
        yield running


@pytest.fixture(scope="module")
def slow_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    """A gateway in front of the test backend with a short body timeout (and in-chat auth errors,
    for which it reads the body of an unauthenticated request)."""
    overrides = {"server": {"body_timeout_seconds": BODY_TIMEOUT}, "auth": {"stream_errors": True}}
    config = gateway_config(backend.url, session_idp, overrides)
    with start_gateway(config) as running:
        yield running


def normal_requests_work(gateway: RunningGateway, token: str, *, stream_body: dict[str, object]) -> None:
    with httpx.Client(base_url=gateway.url, headers=bearer(token), trust_env=False, timeout=10) as client:
        listed = client.post("/chatkit", json={"type": "threads.list", "params": {}})
        assert listed.status_code == 200, listed.text
        streamed = client.post("/chatkit", json=stream_body)
        assert streamed.status_code == 200, streamed.text
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert sse_events(streamed.content)


# ------------------------------------------------------------------------------------------ storm


def test_a_storm_of_dropped_streams_leaves_no_fds_or_upstream_connections_behind(
    storm_gateway: RunningGateway, bench_upstream: tuple[str, int], session_idp: LoopbackIdP
) -> None:
    token = user_token(session_idp)
    short_stream = {"type": "threads.create", "params": {"events": 3, "interval_ms": 1}}
    normal_requests_work(storm_gateway, token, stream_body=short_stream)  # pools warm, as in service
    pids = [storm_gateway.process.pid]
    upstream_port = bench_upstream[1]
    time.sleep(0.2)
    base_fds, base_upstream = fd_count(pids), established_to(upstream_port)

    host, port = address_of(storm_gateway.url)
    storm = Storm(host, port, token, STORM_STREAMS)
    storm.start()
    try:
        assert storm.opened.wait(60), "the storm did not open within 60 s"
        assert storm.result is not None
        assert (storm.result.opened, storm.result.failures) == (STORM_STREAMS, 0)
        # Every stream is live end to end: a client socket and an upstream connection each (an idle
        # pooled connection from before may carry one of them).
        assert established_to(upstream_port) >= STORM_STREAMS
        assert fd_count(pids) >= 2 * STORM_STREAMS
    finally:
        storm.release()
        storm.join(30)

    fds_back = wait_until(lambda: fd_count(pids) <= base_fds, timeout=10)
    upstream_back = wait_until(lambda: established_to(upstream_port) <= base_upstream, timeout=10)
    assert fds_back is not None, f"gateway fds {fd_count(pids)} > baseline {base_fds} 10 s after the drop"
    assert upstream_back is not None, (
        f"{established_to(upstream_port)} connections to the upstream > baseline {base_upstream} 10 s after the drop"
    )
    normal_requests_work(storm_gateway, token, stream_body=short_stream)
    assert storm_gateway.process.poll() is None


# ------------------------------------------------------------------------------------ slow bodies


def auth(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token.encode())


def head(method: str, target: bytes, token: str, content_type: bytes, length: int) -> bytes:
    headers = [
        (b"host", b"gateway.test"),
        (b"content-type", content_type),
        auth(token),
        (b"content-length", str(length).encode()),
    ]
    return request_bytes(method, target, headers)


class Trickle:
    """Sends `data` one byte every `interval` s from a thread, until done, stopped or the socket fails."""

    def __init__(self, sock: socket.socket, data: bytes, interval: float) -> None:
        self.sock, self.data, self.interval = sock, data, interval
        self.sent = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5)

    def _run(self) -> None:
        for byte in self.data:
            if self.stopped.is_set():
                return
            try:
                self.sock.send(bytes([byte]))
            except OSError:
                return
            self.sent += 1
            self.stopped.wait(self.interval)


def assert_request_timeout(response: RawResponse) -> None:
    assert response.status == 408, response
    assert response.headers["content-type"] == "application/json"
    assert response.error_code == "request_timeout"


def test_a_json_body_trickled_one_byte_a_second_gets_408_in_time(
    slow_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    with socket.create_connection(address_of(slow_gateway.url), timeout=10) as sock:
        sock.sendall(head("POST", b"/chatkit", token, b"application/json", len(BODY)))
        with Trickle(sock, BODY, 1.0) as trickle:
            response = read_response(sock, timeout=BODY_TIMEOUT + 5, linger=0)

    assert_request_timeout(response)
    assert BODY_TIMEOUT - 0.5 <= response.elapsed <= BODY_TIMEOUT + MARGIN, response.elapsed
    assert trickle.sent < len(BODY)
    assert clean_backend.requests() == []


def test_an_unauthenticated_trickle_is_bounded_by_the_same_body_timeout(
    slow_gateway: RunningGateway, clean_backend: Backend
) -> None:
    """With `auth.stream_errors` the gateway reads a refused request's body (to tell a streaming op,
    which gets its error in-chat). That read must be bounded by `server.body_timeout_seconds` too,
    or an anonymous client holds a task for the built-in 30 s instead of the configured bound."""
    with socket.create_connection(address_of(slow_gateway.url), timeout=10) as sock:
        sock.sendall(head("POST", b"/chatkit", "not-a-token", b"application/json", len(BODY)))
        with Trickle(sock, BODY, 1.0):
            response = read_response(sock, timeout=BODY_TIMEOUT + 4, linger=0)

    assert response.status in (401, 408), f"no answer within {BODY_TIMEOUT + 4} s: {response}"
    assert response.elapsed <= BODY_TIMEOUT + MARGIN, response.elapsed
    assert response.error_code in ("invalid_token", "request_timeout")
    assert clean_backend.requests() == []


def test_an_upload_pausing_longer_than_the_timeout_gets_408(
    slow_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    declared, sent = 100, b"u" * 10
    target = b"/chatkit/uploads/attachments/atc_missing/upload"
    with socket.create_connection(address_of(slow_gateway.url), timeout=10) as sock:
        sock.sendall(head("PUT", target, token, b"application/octet-stream", declared) + sent)
        response = read_response(sock, timeout=BODY_TIMEOUT + 5, linger=0)

    assert_request_timeout(response)
    assert BODY_TIMEOUT - 0.5 <= response.elapsed <= BODY_TIMEOUT + MARGIN, response.elapsed
    # Uploads stream to the backend as they arrive; after the timeout the backend's request is cut
    # off (it sees a disconnect), never completed.
    wait_until(lambda: clean_backend.requests() != [], timeout=2)
    for request in clean_backend.requests():
        assert (request["method"], request["path"]) == ("PUT", "/uploads/attachments/atc_missing/upload")
        assert request["body_length"] <= len(sent) < declared


def test_a_request_timeout_closes_the_connection(
    slow_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    """RFC 9110 §15.5.9: a 408 means the server will not wait any longer, so it closes.

    Otherwise the 408 frees the gateway's task but not the socket: a client that keeps trickling
    keeps the connection (uvicorn resets its keep-alive timer on every byte) for as long as it likes.
    """
    with socket.create_connection(address_of(slow_gateway.url), timeout=10) as sock:
        sock.sendall(head("POST", b"/chatkit", token, b"application/json", 10_000))
        with Trickle(sock, b"x" * 10, 0.25):
            response = read_response(sock, timeout=BODY_TIMEOUT + 5, linger=0)
            assert_request_timeout(response)
            closed = response.closed or is_closed(sock, 1.5)

    assert closed, "the connection stayed open after the 408 (send `Connection: close` with it)"


def test_a_413_before_the_body_closes_the_connection(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    """A 10 GB declared body refused at once: the rest is not wanted, so the connection closes
    rather than letting the client push (or trickle) the declared bytes into a discarding server."""
    with socket.create_connection(address_of(gateway.url), timeout=10) as sock:
        sock.sendall(head("POST", b"/chatkit", token, b"application/json", 10 * 1024**3) + b'{"type":')
        with Trickle(sock, b"x" * 10, 0.25):
            response = read_response(sock, timeout=5, linger=0)
            assert response.status == 413, response
            closed = response.closed or is_closed(sock, 1.5)

    assert closed, "the connection stayed open after the 413 (send `Connection: close` with it)"
    assert clean_backend.requests() == []


# ----------------------------------------------------------------------------------- slow headers


def test_half_open_requests_hold_a_socket_each_but_do_not_block_other_clients(
    slow_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    """A request line and one header, then nothing: uvicorn has no header-read deadline.

    Measured and asserted: the connections stay open past `timeout_keep_alive` (5 s) and past
    `server.body_timeout_seconds`, each holding one gateway fd, while normal requests are served
    at once. Bounding them is the front proxy's job (nginx `client_header_timeout`, see
    docs/hardening.md). If the gateway ever gains its own header deadline, this test must change.
    """
    pids = [slow_gateway.process.pid]
    with httpx.Client(base_url=slow_gateway.url, headers=bearer(token), trust_env=False, timeout=5) as client:
        assert client.post("/chatkit", json={"type": "threads.list", "params": {}}).status_code == 200  # pools warm
    clean_backend.reset()
    base_fds = fd_count(pids)
    address = address_of(slow_gateway.url)
    with ExitStack() as stack:
        opened_at = time.monotonic()
        held = []
        for _ in range(HALF_OPEN):
            sock = stack.enter_context(socket.create_connection(address, timeout=5))
            sock.sendall(b"POST /chatkit HTTP/1.1\r\nHost: gateway.test\r\n")
            held.append(sock)
        assert wait_until(lambda: fd_count(pids) >= base_fds + HALF_OPEN, timeout=5) is not None

        started = time.monotonic()
        with httpx.Client(base_url=slow_gateway.url, headers=bearer(token), trust_env=False, timeout=5) as client:
            assert client.post("/chatkit", json={"type": "threads.list", "params": {}}).status_code == 200
            assert client.get("/healthz").status_code == 200
        assert time.monotonic() - started < 2.0, "half-open connections slowed other clients down"

        time.sleep(max(0.0, opened_at + KEEP_ALIVE + 1.5 - time.monotonic()))
        still_open = sum(not is_closed(sock) for sock in held)
        assert still_open == HALF_OPEN, f"{HALF_OPEN - still_open} half-open connections were closed by the gateway"
        assert fd_count(pids) >= base_fds + HALF_OPEN

    # The client gives up: the gateway lets go of every one of them.
    assert wait_until(lambda: fd_count(pids) <= base_fds, timeout=5) is not None, (fd_count(pids), base_fds)
    assert [request["path"] for request in clean_backend.requests()] == ["/chatkit"]
