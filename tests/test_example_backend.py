"""examples/backend: a ChatKit backend that believes only the gateway and keeps the token from the model.

In process (Starlette's TestClient): this checks the example's wiring, not streaming over a network.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.backend_sdk import IDENTITY_HEADER, sign_identity

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "backend" / "app.py"
SECRET = "example-secret-" + "x" * 32
TOKEN = "eyJhbGciOiJSUzI1NiJ9.user-token.signature"
CRM_TOKEN = "eyJhbGciOiJFUzI1NiJ9.crm-tool-token.signature"
ISSUER = "https://idp.example.com"
IDENTITY: dict[str, Any] = {
    "userId": "user-ada",
    "userInfo": {"id": "user-ada", "name": "Ada Lovelace", "email": "ada@example.com", "issuer": ISSUER},
    "requestId": "req-1",
}
PAGE = {"url": "https://app.example.com/pricing", "title": "Pricing"}


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("chatkit_gateway_example_backend", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def create_message(text: str, identity: dict[str, Any] = IDENTITY) -> bytes:
    content = [{"type": "input_text", "text": text}]
    params = {"input": {"content": content, "attachments": [], "inference_options": {}}}
    body = {"type": "threads.create", "params": params, "metadata": {**identity, "pageContext": PAGE}}
    return json.dumps(body).encode()


def list_threads(identity: dict[str, Any]) -> bytes:
    return json.dumps({"type": "threads.list", "params": {}, "metadata": identity}).encode()


def gateway_headers(body: bytes, identity: dict[str, Any] = IDENTITY) -> dict[str, str]:
    """What the gateway sends with `body` when `upstream.identity_secret`, `forward_access_token` and a
    `[[tokens.resources]]` entry named "crm" are set."""
    metadata = json.loads(body)["metadata"]
    return {
        IDENTITY_HEADER: sign_identity({**metadata, **identity, "issuer": ISSUER}, SECRET, body=body),
        "X-User-Id": identity["userId"],
        "Authorization": f"Bearer {TOKEN}",
        "X-ChatKit-Token-crm": CRM_TOKEN,
        "Content-Type": "application/json",
    }


def assistant_texts(stream: str) -> list[str]:
    events = [json.loads(frame.removeprefix("data: ")) for frame in stream.split("\n\n") if frame]
    items = [event["item"] for event in events if event["type"] == "thread.item.done"]
    return [part["text"] for item in items if item["type"] == "assistant_message" for part in item["content"]]


def test_reply_names_the_user_and_the_tool_token_reaches_only_the_tool_headers(example: ModuleType) -> None:
    model = example.OfflineModel()
    with TestClient(example.create_app(SECRET, model)) as client:
        body = create_message("hi")
        response = client.post("/chatkit", content=body, headers=gateway_headers(body))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert assistant_texts(response.text) == ["Hello, Ada Lovelace! You said: hi"]
    assert TOKEN not in response.text and CRM_TOKEN not in response.text

    (call,) = model.calls
    assert "Ada Lovelace" in call.instructions and "Pricing" in call.instructions
    for secret in (TOKEN, CRM_TOKEN):
        assert secret not in call.instructions and secret not in call.user_text
    (tool,) = call.tools
    assert tool.url == example.CRM_MCP_URL
    # The crm server gets its own token, not the user's (which is valid everywhere the user's is).
    assert tool.headers == {"Authorization": f"Bearer {CRM_TOKEN}"}


def test_request_without_the_signed_identity_is_refused(example: ModuleType) -> None:
    model = example.OfflineModel()
    with TestClient(example.create_app(SECRET, model)) as client:
        response = client.post("/chatkit", content=create_message("hi"), headers={"X-User-Id": "user-ada"})
    assert response.status_code == 403
    assert model.calls == []


def test_body_identity_edited_after_signing_is_refused(example: ModuleType) -> None:
    model = example.OfflineModel()
    forged = {**IDENTITY, "userId": "user-admin"}
    with TestClient(example.create_app(SECRET, model)) as client:
        headers = gateway_headers(create_message("hi"))
        response = client.post("/chatkit", content=create_message("hi", forged), headers=headers)
    assert response.status_code == 403
    assert model.calls == []


def test_a_header_captured_from_one_request_cannot_vouch_for_another(example: ModuleType) -> None:
    model = example.OfflineModel()
    with TestClient(example.create_app(SECRET, model)) as client:
        captured = gateway_headers(list_threads(IDENTITY))
        assert client.post("/chatkit", content=list_threads(IDENTITY), headers=captured).status_code == 200
        # The same user's metadata, copied verbatim into a message the user never sent.
        response = client.post("/chatkit", content=create_message("transfer everything"), headers=captured)
    assert response.status_code == 403
    assert model.calls == []


def test_each_user_sees_only_their_own_threads(example: ModuleType) -> None:
    grace = {
        "userId": "user-grace",
        "userInfo": {"id": "user-grace", "name": "Grace", "issuer": ISSUER},
        "requestId": "req-2",
    }
    with TestClient(example.create_app(SECRET)) as client:
        body = create_message("hi")
        client.post("/chatkit", content=body, headers=gateway_headers(body))

        def threads_of(identity: dict[str, Any]) -> list[str]:
            body = list_threads(identity)
            response = client.post("/chatkit", content=body, headers=gateway_headers(body, identity))
            assert response.status_code == 200
            return [thread["id"] for thread in response.json()["data"]]

        assert len(threads_of(IDENTITY)) == 1
        assert threads_of(grace) == []


def test_trusted_network_mode_reads_the_identity_from_metadata(example: ModuleType) -> None:
    model = example.OfflineModel()
    headers = {"X-User-Id": "user-ada", "X-User-Email": "ada@example.com"}
    with TestClient(example.create_app(None, model)) as client:
        response = client.post("/chatkit", content=create_message("hello"), headers=headers)
    assert assistant_texts(response.text) == ["Hello, Ada Lovelace! You said: hello"]
    assert model.calls[0].tools == []  # no tool token was sent: no tool is offered


def test_trusted_network_mode_refuses_an_email_header_that_disagrees(example: ModuleType) -> None:
    model = example.OfflineModel()
    headers = {"X-User-Id": "user-ada", "X-User-Email": "mallory@example.com"}
    with TestClient(example.create_app(None, model)) as client:
        response = client.post("/chatkit", content=create_message("hello"), headers=headers)
    assert response.status_code == 403
    assert model.calls == []
