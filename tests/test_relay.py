"""The relay: ChatKit requests through the gateway to a real ChatKitServer and back, streams untouched."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.chatkit import (
    REQUESTS,
    assert_streams_while_backend_produces,
    create_thread,
    deltas,
    done_item,
    exchange,
    open_stream_then_drop,
    post,
    reply_text,
    saw_cancellation,
    sse_events,
    user_input,
)
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port


@pytest.mark.parametrize("op", list(REQUESTS))
def test_every_request_type_gets_the_same_answer_as_direct(
    op: str, backend: Backend, gateway: RunningGateway, token: str
) -> None:
    backend.reset()
    with httpx.Client(base_url=backend.url, trust_env=False, timeout=30) as direct:
        expected = exchange(direct, op)
    backend.reset()
    with httpx.Client(base_url=gateway.url, headers=bearer(token), trust_env=False, timeout=30) as through:
        answer = exchange(through, op)

    assert expected[0] == 200
    assert answer == expected


def test_stream_reaches_the_client_while_the_backend_is_still_producing(
    gw_client: httpx.Client, clean_backend: Backend
) -> None:
    assert_streams_while_backend_produces(gw_client, clean_backend)


def test_sse_response_headers_are_set_for_unbuffered_delivery(gw_client: httpx.Client) -> None:
    response = post(gw_client, "threads.create", {"input": user_input("hi")})

    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers
    assert "content-encoding" not in response.headers


def test_a_500_kib_single_line_event_arrives_intact(gw_client: httpx.Client) -> None:
    response = post(gw_client, "threads.create", {"input": user_input("/big 500")})

    events = sse_events(response.content)
    (big,) = deltas(events)
    assert len(big) == 500 * 1024
    longest = max(response.content.split(b"\n\n"), key=len)
    assert len(longest) > 500 * 1024 and b"\n" not in longest


def test_unicode_survives_both_ways(gw_client: httpx.Client, clean_backend: Backend) -> None:
    text = "naïve café 東京 🚀 \u2028"
    thread_id, events = create_thread(gw_client, text)

    assert reply_text(events) == f"Echo: {text}"
    _, unicode_events = create_thread(gw_client, "/unicode")
    assert reply_text(unicode_events) == "héllo wörld 你好 🌍 \u2028 end"
    sent = clean_backend.requests()[0]
    assert sent["json"]["params"]["input"]["content"][0]["text"] == text


def test_disconnect_mid_stream_cancels_the_backend_which_keeps_the_partial_reply(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    thread_id = open_stream_then_drop(host, int(port), token)
    if not saw_cancellation(clean_backend, thread_id):
        pytest.fail("the backend never saw the stream cancelled")
    items = clean_backend.thread(thread_id)["items"]
    partial = [i for i in items if i["type"] == "assistant_message"]
    assert partial and partial[0]["content"][0]["text"].startswith("slow reply")


def test_upstream_dying_mid_frame_ends_the_stream_with_a_chatkit_error_event(gw_client: httpx.Client) -> None:
    response = post(gw_client, "threads.create", {"input": user_input("/die")})

    assert response.status_code == 200
    assert response.content.endswith(b"\n\n")
    last = response.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    event = json.loads(last.removeprefix(b"data: "))
    assert event == {
        "type": "error",
        "code": "custom",
        "message": "The connection to the assistant was interrupted. Please try again.",
        "allow_retry": True,
    }
    # The half-written frame was closed by a blank line before the error event.
    assert b'data: {"type":"thr\n\ndata: {"type":"error"' in response.content


def test_upstream_chatkit_errors_are_relayed_as_sent(gw_client: httpx.Client) -> None:
    _, events = create_thread(gw_client, "/error Quota exceeded")
    assert events[-1] == {"type": "error", "code": "custom", "message": "Quota exceeded", "allow_retry": False}
    _, crashed = create_thread(gw_client, "/crash")
    assert crashed[-1]["type"] == "error" and crashed[-1]["code"] == "stream.error"


def test_upstream_http_errors_pass_through_with_their_status(gw_client: httpx.Client) -> None:
    response = post(gw_client, "threads.get_by_id", {"thread_id": "thr_missing"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


# -- upstream faults ---------------------------------------------------------------------------


@pytest.fixture
def silent_upstream() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_upstream_refusing_connections_gets_502_json(backend: Backend, session_idp: LoopbackIdP, token: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with (
        start_gateway(gateway_config(closed, session_idp)) as gw,
        httpx.Client(base_url=gw.url, headers=bearer(token), trust_env=False) as client,
    ):
        for op, params in (("threads.list", {}), ("threads.create", {"input": user_input("hi")})):
            response = post(client, op, params)
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "upstream_unavailable"
            assert response.headers["cache-control"] == "no-store"


def test_upstream_that_never_answers_gets_504_json(silent_upstream: str, session_idp: LoopbackIdP, token: str) -> None:
    config = gateway_config(
        silent_upstream, session_idp, {"upstream": {"connect_timeout": 0.5, "response_timeout": 0.5}}
    )
    with (
        start_gateway(config) as gw,
        httpx.Client(base_url=gw.url, headers=bearer(token), trust_env=False, timeout=10) as client,
    ):
        for op, params in (("threads.list", {}), ("threads.create", {"input": user_input("hi")})):
            started = time.monotonic()
            response = post(client, op, params)
            assert response.status_code == 504, response.text
            assert response.json()["error"]["code"] == "upstream_timeout"
            assert time.monotonic() - started < 5


def test_redirects_from_the_backend_are_relayed_not_followed(
    backend: Backend, session_idp: LoopbackIdP, token: str
) -> None:
    config = gateway_config(backend.url, session_idp, {"upstream": {"url": f"{backend.url}/redirect"}})
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, headers=bearer(token), trust_env=False) as client:
        response = post(client, "threads.list", {})
    assert response.status_code == 302
    assert response.headers["location"] == "http://127.0.0.1:9/trap"


# -- request ids and forwarded headers ----------------------------------------------------------


def test_well_formed_request_id_is_kept_and_a_bad_one_replaced(gw_client: httpx.Client, clean_backend: Backend) -> None:
    kept = post_with(gw_client, {"x-request-id": "req-123_abc.DEF"})
    replaced = post_with(gw_client, {"x-request-id": "bad id\u00e9"})
    missing = post_with(gw_client, {})

    sent = [dict(r["headers"]) for r in clean_backend.requests()]
    assert kept.headers["x-request-id"] == sent[0]["x-request-id"] == "req-123_abc.DEF"
    assert replaced.headers["x-request-id"] == sent[1]["x-request-id"] != "bad id"
    assert len(sent[1]["x-request-id"]) == 32
    assert missing.headers["x-request-id"] == sent[2]["x-request-id"]


def post_with(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    encoded = {k: v.encode("utf-8") for k, v in headers.items()}
    return client.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=encoded)


def test_client_forwarded_headers_are_replaced_by_the_gateways_view(
    gw_client: httpx.Client, clean_backend: Backend
) -> None:
    spoofed = {"x-forwarded-for": "6.6.6.6", "x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}
    post_with(gw_client, {**spoofed, "forwarded": "for=6.6.6.6"})

    headers = clean_backend.requests()[0]["headers"]
    names = [name for name, _ in headers]
    assert names.count("x-forwarded-for") == 1 and "forwarded" not in names
    sent = dict(headers)
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == gw_client.base_url.netloc.decode()


def test_trusted_proxy_forwarded_headers_are_extended(backend: Backend, session_idp: LoopbackIdP, token: str) -> None:
    config = gateway_config(backend.url, session_idp, {"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, headers=bearer(token), trust_env=False) as client:
        backend.reset()  # forget the gateway's start-up warm-up
        post_with(
            client, {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https", "x-forwarded-host": "app.example"}
        )
    sent = dict(backend.requests()[0]["headers"])
    assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-forwarded-host"] == "app.example"


def test_streamed_items_keep_their_order_and_content(gw_client: httpx.Client) -> None:
    thread_id, events = create_thread(gw_client, "one two three")
    assert events[0]["type"] == "thread.created"
    assert done_item(events, "user_message")["thread_id"] == thread_id
    assert deltas(events) == ["Echo:", " one", " two", " three"]


def test_heartbeat_comments_fill_silences_between_frames_only(
    backend: Backend, session_idp: LoopbackIdP, token: str
) -> None:
    config = gateway_config(backend.url, session_idp, {"upstream": {"heartbeat_seconds": 0.2}})
    body = {"type": "threads.create", "params": {"input": user_input("/slow 4")}}
    with (
        start_gateway(config) as gw,
        httpx.Client(base_url=gw.url, headers=bearer(token), trust_env=False, timeout=30) as client,
    ):
        response = client.post("/chatkit", json=body)

    frames = response.content.split(b"\n\n")
    assert b": keepalive" in frames  # the backend pauses 0.5 s between words
    assert all(frame.startswith((b"data: ", b": keepalive")) for frame in frames[:-1])
    assert reply_text(sse_events(response.content)) == "slow reply streamed slow"
