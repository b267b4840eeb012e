"""Operating the gateway: its log lines, its metrics, its drain on SIGTERM, and per-user limits."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import tomli_w

from gateway.logs import JSONFormatter
from tests.support.chatkit import sse_events, user_input
from tests.support.checks import metric, wait_for
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token
from tests.support.procs import free_port, process_log, start_process, stop_process

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP
    from tests.support.redis import RedisServer


LIST = {"type": "threads.list", "params": {}}


def create(text: str) -> dict[str, Any]:
    return {"type": "threads.create", "params": {"input": user_input(text)}}


def log_lines(gateway: RunningGateway) -> list[dict[str, Any]]:
    lines = [line for line in gateway.log().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def access_lines(gateway: RunningGateway) -> list[dict[str, Any]]:
    return [line for line in log_lines(gateway) if line["logger"] == "chatkit_gateway.access"]


# -- logs --------------------------------------------------------------------------------------


def test_one_json_log_line_per_request_with_its_facts(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp, sub="log-user")
    with start_gateway(gateway_config(backend.url, session_idp)) as gw, httpx.Client(base_url=gw.url) as client:
        client.post("/chatkit", json=LIST, headers={**bearer(token), "x-request-id": "req-json-1"})
        client.post("/chatkit", json=create("one two three"), headers={**bearer(token), "x-request-id": "req-sse-1"})
        client.post("/chatkit", json=LIST, headers={"x-request-id": "req-401-1"})
        wait_for(lambda: len(access_lines(gw)) >= 3)
        lines = {line["request_id"]: line for line in access_lines(gw)}
        every_line = log_lines(gw)

    assert all({"time", "level", "logger", "message"} <= set(line) for line in every_line)
    plain = lines["req-json-1"]
    assert plain["op"] == "threads.list" and plain["status"] == 200 and plain["upstream_status"] == 200
    assert plain["user_id"] == "log-user" and plain["source"] == "bearer"
    assert plain["bytes_in"] > 0 and plain["bytes_out"] > 0 and plain["duration_ms"] >= plain["ttfb_ms"] >= 0
    stream = lines["req-sse-1"]
    assert stream["op"] == "threads.create" and stream["streamed"] is True and stream["events"] >= 8
    refused = lines["req-401-1"]
    assert refused["status"] == 401 and refused["error"] == "missing_credentials" and refused["user_id"] is None
    assert any(line["message"] == "configuration" for line in every_line)


def test_logs_never_hold_a_token_a_cookie_or_message_text(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp, sub="quiet-user")
    cookie_token = user_token(session_idp, sub="cookie-user")
    secret_text = "my-very-private-message-7731"
    config = gateway_config(backend.url, session_idp, {"logging": {"level": "debug"}})
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url) as client:
        client.post("/chatkit", json=create(secret_text), headers=bearer(token))
        client.post(
            "/chatkit",
            json=create(secret_text),
            headers={"cookie": f"auth_token={cookie_token}; other=cookie-value-99", "origin": gw.url},
        )
        client.post("/chatkit", json=LIST, headers=bearer(token + "tampered"))
        client.post(
            "/chatkit", json=LIST, headers={"cookie": f"auth_token={cookie_token}", "origin": "https://evil.example"}
        )
        wait_for(lambda: len(access_lines(gw)) >= 4)
        log = gw.log()
    for secret in (token, cookie_token, token.rsplit(".", 1)[1], secret_text, "cookie-value-99", "Bearer "):
        assert secret not in log


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_count_what_happened(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp)
    with start_gateway(gateway_config(backend.url, session_idp)) as gw, httpx.Client(base_url=gw.url) as client:
        before = client.get("/metrics").text
        for _ in range(3):
            client.post("/chatkit", json=LIST, headers=bearer(token))
        client.post("/chatkit", json=create("hello"), headers=bearer(token))
        client.post("/chatkit", json=LIST, headers=bearer("not.a.token"))
        client.post("/chatkit", json=LIST)
        response = client.get("/metrics")
        after = response.text

    assert response.headers["content-type"].startswith("text/plain")
    count = "chatkit_gateway_requests_total"
    assert (
        metric(after, count, op="threads.list", status="200") - metric(before, count, op="threads.list", status="200")
        == 3
    )
    assert metric(after, count, op="threads.create", status="200") == 1
    failures = "chatkit_gateway_auth_failures_total"
    assert (
        metric(after, failures, code="invalid_token") == 1 and metric(after, failures, code="missing_credentials") == 1
    )
    assert metric(after, "chatkit_gateway_request_duration_seconds_count", op="threads.list") >= 3
    assert metric(after, "chatkit_gateway_time_to_first_byte_seconds_count", op="threads.create") == 1
    assert metric(after, "chatkit_gateway_open_streams") == 0
    assert metric(after, "chatkit_gateway_jwks_fetches_total", issuer=session_idp.issuer, result="ok") >= 1
    assert metric(after, "chatkit_gateway_jwks_key_age_seconds", issuer=session_idp.issuer) >= 0
    assert "chatkit_gateway_upstream_errors_total" in after or "# TYPE chatkit_gateway_upstream_errors" in after


def test_open_streams_gauge_follows_live_streams(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp)
    with start_gateway(gateway_config(backend.url, session_idp)) as gw:
        done = threading.Event()

        def slow_stream() -> None:
            httpx.post(f"{gw.url}/chatkit", json=create("/slow 6"), headers=bearer(token), timeout=30)
            done.set()

        thread = threading.Thread(target=slow_stream)
        thread.start()
        wait_for(lambda: metric(httpx.get(f"{gw.url}/metrics").text, "chatkit_gateway_open_streams") == 1)
        done.wait(30)
        thread.join()
        assert metric(httpx.get(f"{gw.url}/metrics").text, "chatkit_gateway_open_streams") == 0


def test_upstream_failures_are_counted_by_kind(session_idp: LoopbackIdP) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with start_gateway(gateway_config(closed, session_idp)) as gw, httpx.Client(base_url=gw.url) as client:
        client.post("/chatkit", json=LIST, headers=bearer(user_token(session_idp)))
        text = client.get("/metrics").text
    assert metric(text, "chatkit_gateway_upstream_errors_total", kind="upstream_unavailable") == 1


# -- drain ---------------------------------------------------------------------------------------


@pytest.fixture
def drain_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    config = gateway_config(backend.url, session_idp, {"server": {"port": port, "shutdown_grace_seconds": 3}})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gateway.toml"
        path.write_text(tomli_w.dumps(config))
        url = f"http://127.0.0.1:{port}"
        proc = start_process(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path)], ready_url=f"{url}/readyz"
        )
        try:
            yield url, proc
        finally:
            stop_process(proc)


def stream_in_thread(url: str, token: str, text: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        with httpx.stream("POST", f"{url}/chatkit", json=create(text), headers=bearer(token), timeout=60) as response:
            result["status"] = response.status_code
            body = b""
            for chunk in response.iter_raw():
                body += chunk
                result.setdefault("first_at", time.monotonic())
            result["body"] = body

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: "first_at" in result)
    return thread, result


def test_sigterm_turns_readyz_off_at_once_and_lets_a_stream_finish(
    drain_gateway: tuple[str, subprocess.Popen[bytes]], session_idp: LoopbackIdP
) -> None:
    url, proc = drain_gateway
    thread, result = stream_in_thread(url, user_token(session_idp), "/slow 4")  # about 2 s
    os.kill(proc.pid, signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 503, timeout=2)
    assert httpx.get(f"{url}/readyz").json()["status"] == "draining"
    thread.join(20)
    assert proc.wait(20) == 0
    events = sse_events(result["body"])
    assert events[-1]["type"] == "thread.item.done"  # completed, not cut
    assert not [e for e in events if e["type"] == "error"]


def test_a_stream_longer_than_the_grace_ends_with_an_error_event(
    drain_gateway: tuple[str, subprocess.Popen[bytes]], session_idp: LoopbackIdP
) -> None:
    url, proc = drain_gateway
    thread, result = stream_in_thread(url, user_token(session_idp), "/forever")
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    thread.join(20)
    assert proc.wait(20) == 0
    assert 2.5 < time.monotonic() - started < 15  # the 3 s grace, then the end
    last = sse_events(result["body"])[-1]
    assert last["type"] == "error" and last["allow_retry"] is True and "restarting" in last["message"]


def test_sigterm_with_nothing_open_exits_at_once(drain_gateway: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, proc = drain_gateway
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 3


# -- per-user limits -------------------------------------------------------------------------


def limited(chatkit_backend: Backend, idp: LoopbackIdP, /, **ratelimit: Any) -> dict[str, Any]:
    return gateway_config(chatkit_backend.url, idp, {"ratelimit": ratelimit})


def test_requests_per_minute_gets_429_with_retry_after(backend: Backend, session_idp: LoopbackIdP) -> None:
    alice, bob = user_token(session_idp, sub="rl-alice"), user_token(session_idp, sub="rl-bob")
    with (
        start_gateway(limited(backend, session_idp, requests_per_minute=3)) as gw,
        httpx.Client(base_url=gw.url) as client,
    ):
        statuses = [client.post("/chatkit", json=LIST, headers=bearer(alice)).status_code for _ in range(3)]
        refused = client.post("/chatkit", json=LIST, headers=bearer(alice))
        other_user = client.post("/chatkit", json=LIST, headers=bearer(bob))
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["retry-after"] == "20"  # 3 per minute: one token every 20 s
    assert other_user.status_code == 200


def test_messages_per_minute_counts_streaming_ops_only(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp, sub="rl-messages")
    config = limited(backend, session_idp, messages_per_minute=1)
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        assert client.post("/chatkit", json=create("hi"), headers=bearer(token)).status_code == 200
        assert client.post("/chatkit", json=create("again"), headers=bearer(token)).status_code == 429
        assert client.post("/chatkit", json=LIST, headers=bearer(token)).status_code == 200


def test_concurrent_stream_cap(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp, sub="rl-streams")
    with start_gateway(limited(backend, session_idp, max_concurrent_streams=1)) as gw:
        thread, _ = stream_in_thread(gw.url, token, "/slow 4")
        second = httpx.post(f"{gw.url}/chatkit", json=create("hi"), headers=bearer(token), timeout=30)
        thread.join(30)
        third = httpx.post(f"{gw.url}/chatkit", json=create("hi"), headers=bearer(token), timeout=30)
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert third.status_code == 200


def test_memory_limits_are_per_process(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp, sub="rl-memory")
    config = limited(backend, session_idp, requests_per_minute=2)
    with start_gateway(config) as one, start_gateway(config) as two:
        answers = [
            httpx.post(f"{gw.url}/chatkit", json=LIST, headers=bearer(token)).status_code for gw in (one, two) * 3
        ]
    assert answers.count(200) == 4 and answers.count(429) == 2


def test_redis_limits_are_shared_by_replicas(
    backend: Backend, session_idp: LoopbackIdP, redis_server: RedisServer
) -> None:
    token = user_token(session_idp, sub=f"rl-shared-{time.monotonic_ns()}")
    config = limited(backend, session_idp, requests_per_minute=4, backend="redis", redis_url=redis_server.url)
    with start_gateway(config) as one, start_gateway(config) as two:
        answers = [
            httpx.post(f"{gw.url}/chatkit", json=LIST, headers=bearer(token)).status_code for gw in (one, two) * 3
        ]
    assert answers.count(200) == 4 and answers.count(429) == 2


@pytest.mark.parametrize(("policy", "expected"), [("allow", 200), ("deny", 429)])
def test_redis_going_away_applies_the_configured_policy(
    backend: Backend, session_idp: LoopbackIdP, policy: str, expected: int
) -> None:
    from tests.support.redis import start_redis

    token = user_token(session_idp, sub=f"rl-down-{policy}")
    with start_redis() as redis:
        config = limited(
            backend, session_idp, requests_per_minute=100, backend="redis", redis_url=redis.url, on_backend_error=policy
        )
        with start_gateway(config) as gw, httpx.Client(base_url=gw.url) as client:
            assert client.post("/chatkit", json=LIST, headers=bearer(token)).status_code == 200
            redis.stop()
            answer = client.post("/chatkit", json=LIST, headers=bearer(token))
            errors = metric(client.get("/metrics").text, "chatkit_gateway_rate_limit_backend_errors_total")
            log = gw.log()
    assert answer.status_code == expected
    assert errors >= 1
    assert "ratelimit" in log and redis.url not in log


def test_process_log_helper_reads_before_stop() -> None:
    # Guards the helper the tests above rely on: the log is readable while the process runs.
    proc = start_process(
        [sys.executable, "-m", "http.server", str(port := free_port()), "--bind", "127.0.0.1"],
        ready_url=f"http://127.0.0.1:{port}/",
    )
    try:
        httpx.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: "GET /" in process_log(proc))
    finally:
        stop_process(proc)


def test_forward_auth_and_uploads_get_their_log_lines_too(backend: Backend, session_idp: LoopbackIdP) -> None:
    token = user_token(session_idp, sub="other-routes")
    with start_gateway(gateway_config(backend.url, session_idp)) as gw, httpx.Client(base_url=gw.url) as client:
        client.get("/auth/verify", headers={**bearer(token), "x-request-id": "verify-1"})
        client.put("/chatkit/uploads/attachments/atc_x/upload", content=b"abc", headers={"x-request-id": "upload-1"})
        wait_for(lambda: len(access_lines(gw)) >= 2)
        lines = {line["request_id"]: line for line in access_lines(gw)}
    assert lines["verify-1"]["route"] == "auth_verify" and lines["verify-1"]["status"] == 200
    assert lines["verify-1"]["user_id"] == "other-routes"
    assert lines["upload-1"]["route"] == "uploads" and lines["upload-1"]["error"] == "missing_credentials"


def test_text_format_lines_carry_the_same_facts(backend: Backend, session_idp: LoopbackIdP) -> None:
    config = gateway_config(backend.url, session_idp, {"logging": {"format": "text"}})
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url) as client:
        client.post("/chatkit", json=LIST, headers={**bearer(user_token(session_idp)), "x-request-id": "text-1"})
        wait_for(lambda: 'request_id="text-1"' in gw.log())
        log = gw.log()
    line = next(line for line in log.splitlines() if 'request_id="text-1"' in line)
    assert "chatkit_gateway.access" in line and 'op="threads.list"' in line and "status=200" in line
    assert not log.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"user_id": "zoë ✓", "note": "line\nbreak\u2028"}, {"user_id": "zoë ✓", "note": "line\nbreak\u2028"}),
        ({"big": 2**70, "when": Path("/x")}, {"big": 2**70, "when": "/x"}),  # beyond orjson: the fallback
    ],
    ids=["unicode-and-breaks", "fallback"],
)
def test_a_json_log_line_is_one_line_of_json(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    record = logging.LogRecord("chatkit_gateway.access", logging.INFO, "", 0, "%s", ("x",), None)
    record.fields = fields
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert {key: entry[key] for key in expected} == expected
    assert entry["message"] == "x" and entry["level"] == "info"


def test_metric_values_are_written_on_the_loop_without_a_lock_and_shared_files_stay_shared(tmp_path: Path) -> None:
    from prometheus_client import generate_latest, values

    from gateway.observe import LoopValue, Observer

    observer = Observer()
    child = observer.requests.labels("threads.list", "200")
    assert type(child._value) is LoopValue
    child.inc()
    child.inc(2)
    observer.latency.labels("threads.list").observe(0.002)
    exposed = generate_latest(observer.exposition).decode()
    assert 'chatkit_gateway_requests_total{op="threads.list",status="200"} 3.0' in exposed
    assert 'chatkit_gateway_request_duration_seconds_bucket{le="0.005",op="threads.list"} 1.0' in exposed
    # A worker's values in the workers' shared files (prometheus-client's multiprocess mode), not in LoopValue.
    script = (
        "import sys; from prometheus_client import values; from gateway.observe import Observer, share_metrics; "
        "share_metrics(sys.argv[1]); o = Observer(); c = o.requests.labels('threads.list', '200'); c.inc(); "
        "assert getattr(values.ValueClass, '_multiprocess', False) and o.exposition is not o.registry; print('shared')"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "shared", done.stderr
    assert values.ValueClass is LoopValue  # this process's, untouched by the worker's
