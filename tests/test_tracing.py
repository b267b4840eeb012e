"""Tracing and stream metrics: one chat turn, from the client's trace through the gateway to the backend.

In-process tests build the gateway with `create_app(..., span_exporter=InMemorySpanExporter())` in
front of the real ChatKit backend and the loopback IdP, and read the spans the SDK ended. The
end-to-end test runs the gateway as users do, exporting over OTLP/HTTP to a real receiver, with
the backend instrumented by OpenTelemetry itself: both services' spans must form one trace.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.app import Gateway, create_app
from gateway.config import build_config
from tests.support.chatkit import sse_events, user_input
from tests.support.fixtures import Backend, start_backend
from tests.support.gateway import bearer, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.otlp import ReceivedSpan, otlp_receiver

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def traced_gateway(
    backend: Backend, idp: LoopbackIdP, **tracing: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter, Gateway]]:
    exporter = InMemorySpanExporter()
    data = gateway_config(
        backend.url, idp, {"tracing": {"enabled": True, "otlp_endpoint": "http://127.0.0.1:9", **tracing}}
    )
    app = create_app(build_config(data), span_exporter=exporter)
    await app.runtime.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
            yield client, exporter, app
    finally:
        await app.runtime.aclose()


def chatkit(op: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"type": op, "params": params}


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def received(backend: Backend, name: str) -> list[str]:
    """The values of header `name` in the last request the backend received."""
    return [value for key, value in backend.requests()[-1]["headers"] if key == name]


def upstream_traceparent(backend: Backend) -> tuple[str, str]:
    """The trace id and parent span id of the traceparent the backend received last."""
    (value,) = received(backend, "traceparent")
    found = TRACEPARENT.fullmatch(value)
    assert found is not None
    return found.group(1), found.group(2)


@pytest.mark.anyio
async def test_a_stream_is_one_server_span_with_verification_and_upstream_children(
    clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    async with traced_gateway(clean_backend, session_idp) as (client, exporter, _):
        headers = bearer(user_token(session_idp))
        created = await client.post(
            "/chatkit", json=chatkit("threads.create", {"input": user_input("hi")}), headers=headers
        )
        assert created.status_code == 200
        thread_id = sse_events(created.content)[0]["thread"]["id"]
        sent_trace, sent_parent = upstream_traceparent(clean_backend)
        listed = await client.post("/chatkit", json=chatkit("items.list", {"thread_id": thread_id}), headers=headers)
        assert listed.status_code == 200
    spans = exporter.get_finished_spans()

    (server,) = by_name(spans, "chatkit threads.create")
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None and server.attributes["chatkit.op"] == "threads.create"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 200
    children = [span for span in spans if span.parent is not None and span.parent.span_id == server.context.span_id]
    assert sorted(span.name for span in children) == ["POST", "verify token"]
    upstream = next(span for span in children if span.name == "POST")
    assert upstream.kind is SpanKind.CLIENT
    assert upstream.attributes is not None and upstream.attributes["http.response.status_code"] == 200
    # The backend was told the upstream span is its parent, in the same trace.
    assert sent_trace == f"{server.context.trace_id:032x}"
    assert sent_parent == f"{upstream.context.span_id:016x}"
    # The first request verified the token; the second found it in the cache.
    verifications = by_name(spans, "verify token")
    assert [span.attributes and span.attributes["chatkit.token_cache_hit"] for span in verifications] == [False, True]
    (listing,) = by_name(spans, "chatkit items.list")
    assert listing.attributes is not None and listing.attributes["chatkit.thread_id"] == thread_id


@pytest.mark.anyio
async def test_an_incoming_traceparent_is_continued_and_replaced_upstream(
    clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    async with traced_gateway(clean_backend, session_idp) as (client, exporter, _):
        headers = {**bearer(user_token(session_idp)), "traceparent": CLIENT_TRACEPARENT}
        response = await client.post("/chatkit", json=chatkit("threads.list", {}), headers=headers)
        assert response.status_code == 200
    (server,) = by_name(exporter.get_finished_spans(), "chatkit threads.list")
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CLIENT_SPAN_ID
    trace_id, parent = upstream_traceparent(clean_backend)
    assert trace_id == CLIENT_TRACE_ID
    assert parent != CLIENT_SPAN_ID  # the gateway's own span, not the client's
    assert len(received(clean_backend, "traceparent")) == 1  # the gateway's only, not the client's too


@pytest.mark.anyio
async def test_an_upload_is_traced_like_a_chatkit_request(clean_backend: Backend, session_idp: LoopbackIdP) -> None:
    async with traced_gateway(clean_backend, session_idp) as (client, exporter, _):
        files = {"file": ("photo.png", b"\x89PNG" + bytes(100), "image/png")}
        response = await client.post("/chatkit/uploads/files", files=files, headers=bearer(user_token(session_idp)))
        assert response.status_code == 200
        sent_trace, sent_parent = upstream_traceparent(clean_backend)
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "chatkit upload")
    assert server.attributes is not None and server.attributes["http.route"] == "/chatkit/uploads/{path}"
    (upstream,) = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
    assert (sent_trace, sent_parent) == (f"{server.context.trace_id:032x}", f"{upstream.context.span_id:016x}")


@pytest.mark.anyio
async def test_spans_carry_no_user_id_token_or_text_unless_the_user_id_is_asked_for(
    clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    token = user_token(session_idp, sub="alice-secret-id")
    body = chatkit("threads.create", {"input": user_input("my private words")})
    async with traced_gateway(clean_backend, session_idp) as (client, exporter, _):
        assert (await client.post("/chatkit", json=body, headers=bearer(token))).status_code == 200
    values = [str(value) for span in exporter.get_finished_spans() for value in (span.attributes or {}).values()]
    assert values, "the spans have attributes"
    assert not [value for value in values if "alice-secret-id" in value or token in value or "private" in value]

    async with traced_gateway(clean_backend, session_idp, include_user_id=True) as (client, exporter, _):
        assert (await client.post("/chatkit", json=body, headers=bearer(token))).status_code == 200
    (server,) = by_name(exporter.get_finished_spans(), "chatkit threads.create")
    assert server.attributes is not None and server.attributes["enduser.id"] == "alice-secret-id"


@pytest.mark.anyio
async def test_a_refused_token_ends_its_spans_with_the_error_code(
    clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    async with traced_gateway(clean_backend, session_idp) as (client, exporter, _):
        response = await client.post("/chatkit", json=chatkit("threads.list", {}), headers=bearer("not.a.token"))
        assert response.status_code == 401
    spans = exporter.get_finished_spans()
    (verification,) = by_name(spans, "verify token")
    assert verification.attributes is not None and verification.attributes["error.type"] == "invalid_token"
    (server,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 401
    assert [r for r in clean_backend.requests() if r["method"] == "POST"] == []  # (warm-up sends OPTIONS)


def test_with_tracing_off_the_clients_traceparent_passes_unchanged(
    gw_client: httpx.Client, clean_backend: Backend
) -> None:
    response = gw_client.post("/chatkit", json=chatkit("threads.list", {}), headers={"traceparent": CLIENT_TRACEPARENT})
    assert response.status_code == 200
    assert received(clean_backend, "traceparent") == [CLIENT_TRACEPARENT]


@pytest.fixture
def traced_peers(session_idp: LoopbackIdP) -> Iterator[tuple[Any, Backend, Any]]:
    with otlp_receiver() as receiver, start_backend(otlp_endpoint=receiver.url) as backend:
        config = gateway_config(backend.url, session_idp, {"tracing": {"enabled": True, "otlp_endpoint": receiver.url}})
        # The SDK's batch delay, read from the environment as OpenTelemetry defines it.
        with start_gateway(config, env={"OTEL_BSP_SCHEDULE_DELAY": "100"}) as gateway:
            yield receiver, backend, gateway


def test_gateway_and_backend_spans_form_one_trace_over_otlp(
    traced_peers: tuple[Any, Backend, Any], session_idp: LoopbackIdP
) -> None:
    receiver, _, gateway = traced_peers
    headers = {**bearer(user_token(session_idp)), "traceparent": CLIENT_TRACEPARENT}
    body = chatkit("threads.create", {"input": user_input("hello")})
    response = httpx.post(gateway.chatkit_url, json=body, headers=headers, trust_env=False, timeout=30)
    assert response.status_code == 200

    def complete(spans: list[ReceivedSpan]) -> bool:
        services = {span.service for span in spans if span.trace_id == CLIENT_TRACE_ID}
        return {"chatkit-gateway", "chatkit-backend"} <= services and any(s.name == "POST" for s in spans)

    spans = [span for span in receiver.wait_for(complete) if span.trace_id == CLIENT_TRACE_ID]
    gateway_spans = {span.name: span for span in spans if span.service == "chatkit-gateway"}
    assert gateway_spans["chatkit threads.create"].parent_span_id == CLIENT_SPAN_ID
    upstream = gateway_spans["POST"]
    assert upstream.parent_span_id == gateway_spans["chatkit threads.create"].span_id
    backend_servers = [span for span in spans if span.service == "chatkit-backend" and span.kind == 2]  # SERVER
    assert backend_servers, spans
    assert all(span.parent_span_id == upstream.span_id for span in backend_servers)


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not found")


def test_time_to_first_event_and_stream_end_reasons_are_measured(
    gateway: Any, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    headers = bearer(user_token(session_idp))
    before = httpx.get(f"{gateway.url}/metrics", trust_env=False).text
    late = chatkit("threads.create", {"input": user_input("/late 0.6")})
    assert httpx.post(gateway.chatkit_url, json=late, headers=headers, trust_env=False, timeout=30).status_code == 200
    after = httpx.get(f"{gateway.url}/metrics", trust_env=False).text
    name = "chatkit_gateway_time_to_first_event_seconds"
    op = {"op": "threads.create"}
    # The backend held its first event back 0.6 s: that observation lands above the 0.5 s bucket.
    assert metric(after, f"{name}_count", **op) == metric(before, f"{name}_count", **op) + 1
    assert metric(after, f"{name}_bucket", le="0.5", **op) == metric(before, f"{name}_bucket", le="0.5", **op)
    assert metric(after, f"{name}_bucket", le="1.0", **op) == metric(before, f"{name}_bucket", le="1.0", **op) + 1
    assert metric(after, f"{name}_sum", **op) - metric(before, f"{name}_sum", **op) >= 0.6
    ended = "chatkit_gateway_streams_ended_total"
    assert metric(after, ended, reason="complete", **op) == metric(before, ended, reason="complete", **op) + 1


def test_a_stream_the_client_leaves_is_counted_as_a_client_disconnect(
    gateway: Any, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    headers = bearer(user_token(session_idp))
    ended = "chatkit_gateway_streams_ended_total"
    op = {"op": "threads.create", "reason": "client_disconnect"}
    before = metric(httpx.get(f"{gateway.url}/metrics", trust_env=False).text, ended, **op)
    body = chatkit("threads.create", {"input": user_input("/slow 20")})
    with httpx.stream("POST", gateway.chatkit_url, json=body, headers=headers, trust_env=False, timeout=30) as answer:
        next(answer.iter_raw())  # the first bytes, then leave
    now = before
    for _ in range(100):  # bounded: 5 s
        now = metric(httpx.get(f"{gateway.url}/metrics", trust_env=False).text, ended, **op)
        if now == before + 1:
            break
        time.sleep(0.05)
    assert now == before + 1
