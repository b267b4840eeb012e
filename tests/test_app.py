"""The application's own edges, in-process: what reaches `Gateway` that no route expects.

A running gateway cannot be made to fail inside a route on purpose, nor (uvicorn runs with
WebSockets off) to hand the app a websocket scope; both are checked here by calling the ASGI app
directly with the scopes and failures uvicorn would hand it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.app import Gateway, create_app
from gateway.config import build_config
from gateway.logs import CredentialRedactor, JSONFormatter

pytestmark = pytest.mark.anyio

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW5ldmVyLWxvZ2dlZA"
CONFIG = build_config(
    {
        "upstream": {"url": "http://127.0.0.1:9/chatkit", "uploads_url": "http://127.0.0.1:9/uploads/"},
        "auth": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["chatkit"]}]},
    }
)


class Failing:
    """A route that fails in a way no route expects, quoting a credential in its message."""

    def __init__(self, *, after_start: bool = False) -> None:
        self.after_start = after_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError(f"unexpected, with headers [(b'authorization', b'Bearer {TOKEN}')]")


def gateway_with(route: Failing) -> Gateway:
    app = create_app(CONFIG)
    return Gateway(app.runtime, app.router, route, route)


def http_scope(path: str) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json")],
    }


async def call(app: Gateway, scope: Scope, incoming: list[Message] | None = None) -> list[Message]:
    pending = list(incoming or [{"type": "http.request", "body": b"{}", "more_body": False}])
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start" and any(m["type"] == "http.response.start" for m in sent):
            raise RuntimeError("Expected ASGI message 'http.response.body'")  # as uvicorn does
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """What the gateway's JSON log handler writes, line by line."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(JSONFormatter(CredentialRedactor(["auth_token"])))
    handler.emit = lambda record: lines.append(handler.format(record))  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("path", ["/chatkit", "/chatkit/uploads/attachments/a/upload"], ids=["chatkit", "uploads"])
async def test_an_unexpected_error_in_a_route_is_a_json_500_logged_without_the_credential(
    log_lines: list[str], path: str
) -> None:
    sent = await call(gateway_with(Failing()), http_scope(path))

    start, body = sent
    assert start["status"] == 500
    assert (b"content-type", b"application/json") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "internal_error"
    (line,) = [line for line in log_lines if '"level":"error"' in line]
    assert "ValueError" in line and "Traceback" in line
    assert TOKEN not in line and TOKEN.rsplit(".", 1)[1] not in line


async def test_an_unexpected_error_after_the_response_started_ends_it_without_a_second_start() -> None:
    sent = await call(gateway_with(Failing(after_start=True)), http_scope("/chatkit"))

    assert [message["type"] for message in sent] == ["http.response.start"]


async def test_a_websocket_scope_is_closed_before_acceptance(log_lines: list[str]) -> None:
    scope: dict[str, Any] = {**http_scope("/chatkit"), "type": "websocket", "scheme": "ws", "subprotocols": []}
    sent = await call(create_app(CONFIG), scope, [{"type": "websocket.connect"}])

    # Closing before `websocket.accept` makes the server answer the handshake with 403.
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert not [line for line in log_lines if '"level":"error"' in line]


async def test_an_unknown_scope_type_gets_nothing_and_raises_nothing() -> None:
    sent = await call(create_app(CONFIG), {"type": "webtransport", "path": "/chatkit"}, [])

    assert sent == []
