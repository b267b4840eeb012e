"""Request-path rules checked in-process, in milliseconds: the gateway built by `create_app` with its
seams (`transport=`, `jwks_transport=`, `clock=`) given the real backend and identity provider apps
(tests/support/inprocess.py). Streaming, disconnects and timing are the real-process tests' job."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.checks import assert_error, metric
from tests.support.clock import NOW, FakeClock
from tests.support.gateway import bearer, user_token
from tests.support.idp import LoopbackIdP
from tests.support.inprocess import GATEWAY_URL, InProcessGateway, in_process_gateway

pytestmark = pytest.mark.anyio

APP = "https://app.example.com"
ORIGINS = {"security": {"allowed_origins": [APP]}}
LIST = {"type": "threads.list", "params": {}}
CREATE = {"type": "threads.create", "params": {"input": {"content": [{"type": "input_text", "text": "hi"}]}}}


def cookie(token: str) -> dict[str, str]:
    return {"cookie": f"auth_token={token}"}


def values_by_name(pairs: list[list[str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    return values


def sse_data(body: bytes) -> list[dict[str, Any]]:
    frames = [frame for frame in body.split(b"\n\n") if frame.startswith(b"data: ")]
    return [json.loads(frame.removeprefix(b"data: ")) for frame in frames]


async def test_the_backend_gets_the_gateways_metadata_and_the_clients_other_keys(in_process_idp: LoopbackIdP) -> None:
    body = {**LIST, "metadata": {"userId": "mallory", "requestId": "forged", "theme": "dark"}}
    async with in_process_gateway(in_process_idp) as gw:
        response = await gw.client.post("/chatkit", json=body, headers=bearer(user_token(in_process_idp)))
        [seen] = await gw.backend_requests()
    assert response.status_code == 200, response.text
    metadata = seen["json"]["metadata"]
    assert metadata["userId"] == "user-1"
    assert metadata["userInfo"] == {"id": "user-1", "issuer": in_process_idp.issuer}
    assert metadata["requestId"] == response.headers["x-request-id"] != "forged"
    assert metadata["theme"] == "dark"


async def test_identity_headers_a_client_sends_never_reach_the_backend(in_process_idp: LoopbackIdP) -> None:
    forged = {"x-user-id": "mallory", "x-user-email": "m@evil.example", "x-forwarded-for": "203.0.113.9"}
    async with in_process_gateway(in_process_idp) as gw:
        token = user_token(in_process_idp, email="alice@example.com")
        response = await gw.client.post("/chatkit", json=LIST, headers={**bearer(token), **forged})
        [seen] = await gw.backend_requests()
    assert response.status_code == 200, response.text
    headers = values_by_name(seen["headers"])
    assert headers["x-user-id"] == ["user-1"]
    assert headers["x-user-email"] == ["alice@example.com"]
    assert "203.0.113.9" not in headers["x-forwarded-for"]
    assert "authorization" not in headers


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param({}, id="no-origin-no-referer"),
        pytest.param({"origin": "null"}, id="origin-null"),
        pytest.param({"origin": "https://evil.example"}, id="other-origin"),
        pytest.param({"referer": "https://evil.example/page"}, id="other-referer"),
    ],
)
async def test_a_cookie_request_from_anywhere_but_an_allowed_origin_gets_403(
    in_process_idp: LoopbackIdP, origin: dict[str, str]
) -> None:
    async with in_process_gateway(in_process_idp, ORIGINS) as gw:
        response = await gw.client.post("/chatkit", json=LIST, headers={**cookie(user_token(in_process_idp)), **origin})
        assert await gw.backend_requests() == []
    assert_error(response, 403, "origin_not_allowed")


async def test_a_cookie_request_from_an_allowed_origin_and_a_bearer_one_from_anywhere_pass(
    in_process_idp: LoopbackIdP,
) -> None:
    token = user_token(in_process_idp)
    async with in_process_gateway(in_process_idp, ORIGINS) as gw:
        by_cookie = await gw.client.post("/chatkit", json=LIST, headers={**cookie(token), "origin": APP})
        by_bearer = await gw.client.post(
            "/chatkit", json=LIST, headers={**bearer(token), "origin": "https://x.example"}
        )
    assert by_cookie.status_code == 200, by_cookie.text
    assert by_bearer.status_code == 200, by_bearer.text


async def test_with_stream_errors_a_refused_streaming_op_gets_an_error_event_and_a_json_op_a_401(
    in_process_idp: LoopbackIdP,
) -> None:
    async with in_process_gateway(in_process_idp, {"auth": {"stream_errors": True}}) as gw:
        streaming = await gw.client.post("/chatkit", json=CREATE)
        plain = await gw.client.post("/chatkit", json=LIST)
        assert await gw.backend_requests() == []
    assert streaming.status_code == 200
    assert streaming.headers["content-type"].startswith("text/event-stream")
    [event] = sse_data(streaming.content)
    assert event["type"] == "error" and event["allow_retry"] is False
    assert_error(plain, 401, "missing_credentials")


async def test_a_verified_token_stops_working_when_the_gateways_clock_passes_its_exp(
    in_process_idp: LoopbackIdP,
) -> None:
    clock = FakeClock()
    token = user_token(in_process_idp, iat=int(NOW), exp=int(NOW) + 60)
    async with in_process_gateway(in_process_idp, clock=clock) as gw:
        before = await gw.client.post("/chatkit", json=LIST, headers=bearer(token))
        clock.advance(60 + 31)  # past exp and the default 30 s leeway; the verified token is cached
        after = await gw.client.post("/chatkit", json=LIST, headers=bearer(token))
        assert len(await gw.backend_requests()) == 1
    assert before.status_code == 200, before.text
    assert_error(after, 401, "token_expired")


@pytest.mark.parametrize(
    "rest",
    ["..%2fchatkit", "%2e%2e/chatkit", "a%5cb", "a//b", "a%00b"],
    ids=["encoded-slash", "encoded-dots", "encoded-backslash", "empty-segment", "nul"],
)
async def test_an_upload_path_that_could_leave_the_uploads_url_gets_400(in_process_idp: LoopbackIdP, rest: str) -> None:
    async with in_process_gateway(in_process_idp) as gw:
        response = await gw.client.post(
            f"{GATEWAY_URL}/chatkit/uploads/{rest}", content=b"x", headers=bearer(user_token(in_process_idp))
        )
        assert await gw.backend_requests() == []
    assert_error(response, 400, "invalid_upload_path")


async def test_an_upload_in_progress_counts_among_the_open_streams(in_process_idp: LoopbackIdP) -> None:
    """Uploads share the streams' one count: the gauge, `upstream.max_streams` and the drain."""
    more = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"first part;"
        await more.wait()
        yield b"last part"

    async def open_streams(gw: InProcessGateway) -> float:
        return metric((await gw.client.get("/metrics")).text, "chatkit_gateway_open_streams")

    headers = {**bearer(user_token(in_process_idp)), "content-type": "application/octet-stream"}
    async with in_process_gateway(in_process_idp) as gw:
        upload = asyncio.ensure_future(gw.client.post("/chatkit/uploads/files", content=slow_body(), headers=headers))
        async with asyncio.timeout(10):
            while await open_streams(gw) != 1:
                await asyncio.sleep(0.01)
        more.set()
        response = await upload
        after = await open_streams(gw)
    assert response.status_code == 400, response.text  # the backend's answer: no multipart file field
    assert after == 0


@pytest.mark.parametrize(
    ("path", "route"),
    [("/chatkit", "chatkit"), ("/chatkit/uploads/files", "uploads"), ("/auth/verify", "auth_verify")],
    ids=["chatkit", "upload", "forward-auth"],
)
async def test_an_unexpected_error_in_any_endpoint_gets_a_json_500_and_an_access_line_saying_so(
    in_process_idp: LoopbackIdP,
    path: str,
    route: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(headers: object) -> None:
        raise ValueError("a bug, not anything the client sent")

    async with in_process_gateway(in_process_idp) as gw:
        monkeypatch.setattr(gw.app.runtime, "authenticate", broken)
        with caplog.at_level(logging.INFO, logger="chatkit_gateway"):
            response = await gw.client.post(path, json=LIST, headers=bearer(user_token(in_process_idp)))
        assert await gw.backend_requests() == []
    assert_error(response, 500, "internal_error")
    [access] = [r for r in caplog.records if r.name == "chatkit_gateway.access"]
    assert access.fields["route"] == route  # type: ignore[attr-defined]
    assert (access.fields["status"], access.fields["error"]) == (500, "internal_error")  # type: ignore[attr-defined]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
