"""`mode = "exchange"` against a real authorization server (oidc-provider under node, with the
RFC 8693 grant registered): the token the backend receives, its cache, and failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.clock import SYSTEM_CLOCK
from gateway.config import ConfigError, TokenResourceConfig, TokensConfig
from gateway.tokens.exchange import TokenExchange
from gateway.tokens.headers import TokenHeaders
from tests.support.clock import NOW, FakeClock
from tests.support.fixtures import Backend
from tests.support.gateway import AUDIENCE, RunningGateway, bearer
from tests.support.idp import LoopbackIdP
from tests.support.mcp_server import start_tool_server
from tests.support.oidc_provider import AuthorizationServer, start_authorization_server
from tests.support.procs import free_port
from tests.tokens.setup import CRM_AUDIENCE, chat, last_chatkit_request, new_key_file, one_header, tokens_gateway, user
from tests.tokens.test_mcp import call_whoami

CLIENT_ID = "chatkit-gateway"
CLIENT_SECRET = "a-client-secret-for-the-tests"


@pytest.fixture(scope="module")
def authorization_server(session_idp: LoopbackIdP) -> Iterator[AuthorizationServer]:
    with start_authorization_server(
        subject_issuer=session_idp.issuer,
        subject_jwks_uri=session_idp.jwks_url,
        subject_audience=AUDIENCE,
        clients={CLIENT_ID: CLIENT_SECRET},
        resources={CRM_AUDIENCE: {"scope": "crm.read crm.write", "ttl": 600}},
    ) as server:
        yield server


def exchanged_resource(token_endpoint: str, secret_file: str) -> dict[str, Any]:
    return {
        "name": "crm",
        "audience": CRM_AUDIENCE,
        "scopes": ["crm.read"],
        "mode": "exchange",
        "token_endpoint": token_endpoint,
        "client_id": CLIENT_ID,
        "client_secret_file": secret_file,
    }


def secret_file(folder: Path, secret: str) -> str:
    path = folder / "client-secret"
    path.write_text(secret + "\n")
    return str(path)


@pytest.fixture(scope="module")
def exchange_gateway(
    backend: Backend,
    session_idp: LoopbackIdP,
    authorization_server: AuthorizationServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("exchange")
    resource = exchanged_resource(authorization_server.token_endpoint, secret_file(folder, CLIENT_SECRET))
    # At debug level: no line at any level may carry a token (the exchange client's included).
    with tokens_gateway(backend, session_idp, new_key_file(folder), resources=[resource], log_level="debug") as gateway:
        yield gateway


def exchanges_ok(gateway: RunningGateway) -> float:
    metrics = httpx.get(f"{gateway.url}/metrics", trust_env=False).text
    prefix = 'chatkit_gateway_token_exchanges_total{resource="crm",result="ok"} '
    return next((float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


def verify_exchanged(server: AuthorizationServer, token: str) -> dict[str, Any]:
    key = jwt.PyJWKClient(server.jwks_url).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["ES256"], audience=CRM_AUDIENCE, issuer=server.url)
    return claims


def test_the_backend_receives_the_token_the_authorization_server_issued_for_the_resource(
    exchange_gateway: RunningGateway,
    clean_backend: Backend,
    session_idp: LoopbackIdP,
    authorization_server: AuthorizationServer,
) -> None:
    chat(exchange_gateway, user(session_idp, "carol"))
    token = one_header(last_chatkit_request(clean_backend), "x-chatkit-token-crm")
    claims = verify_exchanged(authorization_server, token)
    assert claims["sub"] == "carol"
    assert claims["scope"] == "crm.read"
    assert claims["client_id"] == CLIENT_ID
    # A tool server that trusts the authorization server accepts it as the user.
    jwks = authorization_server.jwks_url
    with start_tool_server(authorization_server.url, jwks, CRM_AUDIENCE) as crm:
        assert call_whoami(crm, token)["sub"] == "carol"


def test_an_exchanged_token_is_reused_for_the_same_user_token_only(
    exchange_gateway: RunningGateway,
    clean_backend: Backend,
    session_idp: LoopbackIdP,
    authorization_server: AuthorizationServer,
) -> None:
    before = authorization_server.exchanges()
    dave = user(session_idp, "dave")
    received = []
    for token in (dave, dave, user(session_idp, "erin")):
        chat(exchange_gateway, token)
        received.append(one_header(last_chatkit_request(clean_backend), "x-chatkit-token-crm"))
    assert received[0] == received[1] != received[2]
    assert authorization_server.exchanges() == before + 2
    assert verify_exchanged(authorization_server, received[2])["sub"] == "erin"


def test_concurrent_requests_of_one_user_share_one_exchange(
    exchange_gateway: RunningGateway,
    clean_backend: Backend,
    session_idp: LoopbackIdP,
    authorization_server: AuthorizationServer,
) -> None:
    before = authorization_server.exchanges()
    token = user(session_idp, "grace")
    body = {"type": "threads.list", "params": {}}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(headers=bearer(token), trust_env=False, timeout=30) as client:
            responses = await asyncio.gather(*(client.post(exchange_gateway.chatkit_url, json=body) for _ in range(8)))
        return [response.status_code for response in responses]

    metrics_before = exchanges_ok(exchange_gateway)
    assert asyncio.run(burst()) == [200] * 8
    assert authorization_server.exchanges() == before + 1
    assert exchanges_ok(exchange_gateway) == metrics_before + 1
    received = {one_header(request, "x-chatkit-token-crm") for request in clean_backend.requests()}
    assert len(received) == 1


def test_no_exchanged_or_user_token_in_the_log_or_the_body(
    exchange_gateway: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    user_token = user(session_idp, "frank")
    chat(exchange_gateway, user_token)
    request = last_chatkit_request(clean_backend)
    exchanged = one_header(request, "x-chatkit-token-crm")
    log = exchange_gateway.log()
    for secret in (exchanged.rsplit(".", 1)[1], user_token.rsplit(".", 1)[1], CLIENT_SECRET):
        assert secret not in log
        assert secret not in request["body"]


@pytest.mark.parametrize("failure", ["wrong-secret", "unreachable"])
def test_a_failed_exchange_is_502_and_nothing_is_forwarded(
    backend: Backend,
    session_idp: LoopbackIdP,
    authorization_server: AuthorizationServer,
    tmp_path: Path,
    failure: str,
) -> None:
    if failure == "wrong-secret":
        endpoint, secret = authorization_server.token_endpoint, "not-the-secret"
    else:
        endpoint, secret = f"http://127.0.0.1:{free_port()}/token", CLIENT_SECRET
    resource = exchanged_resource(endpoint, secret_file(tmp_path, secret))
    with tokens_gateway(backend, session_idp, new_key_file(tmp_path), resources=[resource]) as gateway:
        backend.reset()
        body = {"type": "threads.list", "params": {}}
        response = httpx.post(gateway.chatkit_url, json=body, headers=bearer(user(session_idp)), trust_env=False)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "token_exchange_failed"
        assert backend.requests() == []
        metrics = httpx.get(f"{gateway.url}/metrics", trust_env=False).text
        assert 'chatkit_gateway_token_exchanges_total{resource="crm",result="failed"} 1.0' in metrics
        log = gateway.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any("token exchange for resource crm failed" in line.get("message", "") for line in lines)
    assert not any(secret in line for line in log.splitlines())


def test_an_unreadable_client_secret_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    resource = exchanged_resource("https://idp.test/token", str(tmp_path / "absent"))
    config = TokensConfig.model_validate(
        {"issuer": "https://chat.test", "signing_key_file": new_key_file(tmp_path), "resources": [resource]}
    )
    with pytest.raises(ConfigError, match=r"tokens.resources.crm.client_secret_file: cannot read .*absent"):
        TokenHeaders(config, SYSTEM_CLOCK)


@pytest.mark.parametrize(
    ("answer", "refresh_at"),
    [
        ({"expires_in": 600}, NOW + 600 - 30),
        ({}, NOW + 900 - 30),  # no expires_in: the JWT's exp
        ({"expires_in": 20}, NOW - 10),  # under 30 s: not kept at all
    ],
    ids=["expires_in", "jwt-exp", "too-short"],
)
def test_an_exchanged_token_is_kept_until_30_seconds_before_it_expires(
    tmp_path: Path, answer: dict[str, Any], refresh_at: float
) -> None:
    resource = TokenResourceConfig.model_validate(
        exchanged_resource("https://idp.test/token", secret_file(tmp_path, "s"))
    )
    exchange = TokenExchange(resource, FakeClock(NOW), cache_size=4)
    token = jwt.encode({"exp": NOW + 900}, "k" * 32, algorithm="HS256")
    assert exchange._refresh_at(answer, token) == refresh_at
