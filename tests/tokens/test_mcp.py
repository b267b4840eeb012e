"""A real MCP server (fastmcp's `JWTVerifier` on the gateway's JWKS, issuer and its own audience)
accepts the tool token the backend received for it, and nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastmcp import Client
from jose import jwt

from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway
from tests.support.idp import LoopbackIdP
from tests.support.mcp_server import ToolServer, start_tool_server
from tests.tokens.setup import (
    BILLING_AUDIENCE,
    CRM_AUDIENCE,
    RESOURCES,
    chat,
    last_chatkit_request,
    new_key_file,
    one_header,
    tokens_gateway,
    user,
)

# The same tool server, a token that lives a few seconds: to see an expired one refused. (`exp`
# counts whole seconds, so a token of one second could be minted with almost none left.)
BRIEF = {"name": "crm-brief", "audience": CRM_AUDIENCE, "lifetime_seconds": 3}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.fixture(scope="module")
def peers(
    backend: Backend, session_idp: LoopbackIdP, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningGateway, ToolServer, ToolServer]]:
    key_file = new_key_file(tmp_path_factory.mktemp("keys"))
    with tokens_gateway(backend, session_idp, key_file, resources=[*RESOURCES, BRIEF]) as gateway:
        jwks = f"{gateway.url}/.well-known/jwks.json"
        with (
            start_tool_server(gateway.url, jwks, CRM_AUDIENCE) as crm,
            start_tool_server(gateway.url, jwks, BILLING_AUDIENCE) as billing,
        ):
            yield gateway, crm, billing


def tool_token(gateway: RunningGateway, backend: Backend, idp: LoopbackIdP, name: str, sub: str = "alice") -> str:
    """What the real backend received for tool `name`, after one chat request through the gateway."""
    chat(gateway, user(idp, sub))
    return one_header(last_chatkit_request(backend), f"x-chatkit-token-{name}")


def call_whoami(server: ToolServer, token: str) -> dict[str, Any]:
    """An MCP client as a backend runs one: the tool token as `Authorization: Bearer`."""

    async def call() -> dict[str, Any]:
        async with Client(server.url, auth=token) as client:
            result = await client.call_tool("whoami")
            data: dict[str, Any] = result.structured_content or {}
            return data

    return asyncio.run(call())


def status_with(server: ToolServer, token: str) -> httpx.Response:
    return httpx.post(
        server.url,
        json=INITIALIZE,
        headers={"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"},
        trust_env=False,
    )


def assert_refused(server: ToolServer, token: str) -> None:
    response = status_with(server, token)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    with pytest.raises(Exception):  # noqa: B017 - the client's own error for a 401
        call_whoami(server, token)


def test_the_crm_tool_token_calls_the_crm_tool_as_the_user(
    peers: tuple[RunningGateway, ToolServer, ToolServer], clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    gateway, crm, _ = peers
    token = tool_token(gateway, clean_backend, session_idp, "crm")
    assert status_with(crm, token).status_code == 200
    answer = call_whoami(crm, token)
    assert answer["sub"] == "alice"
    assert answer["scopes"] == ["crm.read"]


def test_the_users_own_idp_token_is_refused_by_the_tool(
    peers: tuple[RunningGateway, ToolServer, ToolServer], session_idp: LoopbackIdP
) -> None:
    _, crm, _ = peers
    assert_refused(crm, user(session_idp, "alice"))


def test_the_crm_token_is_refused_by_billing_and_billings_by_crm(
    peers: tuple[RunningGateway, ToolServer, ToolServer], clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    gateway, crm, billing = peers
    crm_token = tool_token(gateway, clean_backend, session_idp, "crm")
    billing_token = one_header(last_chatkit_request(clean_backend), "x-chatkit-token-billing")
    assert_refused(billing, crm_token)
    assert_refused(crm, billing_token)
    assert call_whoami(billing, billing_token)["scopes"] == ["billing.read", "billing.pay"]


def test_an_expired_tool_token_is_refused(
    peers: tuple[RunningGateway, ToolServer, ToolServer], clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    gateway, crm, _ = peers
    brief = tool_token(gateway, clean_backend, session_idp, "crm-brief")
    assert call_whoami(crm, brief)["sub"] == "alice"  # valid when made, for the same server
    expires_at = jwt.get_unverified_claims(brief)["exp"]
    time.sleep(max(0.0, expires_at + 1.1 - time.time()))  # past `exp` and the server's leeway, if any
    assert_refused(crm, brief)
