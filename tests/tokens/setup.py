"""A gateway with `[tokens]` on, in front of the real test backend, and what the backend received."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.support.chatkit import post, user_input
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port
from tests.tokens.keyfiles import new_key, write_key

ASSERTION_AUDIENCE = "chatkit-backend"
CRM_AUDIENCE = "https://mcp.test/crm"
BILLING_AUDIENCE = "https://mcp.test/billing"
RESOURCES = [
    {"name": "crm", "audience": CRM_AUDIENCE, "scopes": ["crm.read"]},
    {"name": "billing", "audience": BILLING_AUDIENCE, "scopes": ["billing.read", "billing.pay"]},
]


def tokens_section(issuer: str, key_file: str, **settings: Any) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "signing_key_file": key_file,
        "assertion_audience": ASSERTION_AUDIENCE,
        "resources": RESOURCES,
        **settings,
    }


@contextmanager
def tokens_gateway(
    backend: Backend,
    idp: LoopbackIdP,
    key_file: str,
    *,
    port: int | None = None,
    log_level: str = "info",
    upstream: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Iterator[RunningGateway]:
    """A gateway whose `tokens.issuer` is its own URL (so discovery points back at it)."""
    port = port or free_port()
    issuer = f"http://127.0.0.1:{port}"
    overrides: dict[str, Any] = {
        "tokens": tokens_section(issuer, key_file, **settings),
        "logging": {"level": log_level},
    }
    if upstream is not None:
        overrides["upstream"] = dict(upstream)
    config = gateway_config(backend.url, idp, overrides)
    with start_gateway(config, port=port) as running:
        yield running


def new_key_file(folder: Path, name: str = "signing.pem", kind: str = "ec") -> str:
    return write_key(folder, name, new_key(kind))


def chat(gateway: RunningGateway, token: str, text: str = "hello", **headers: str) -> httpx.Response:
    """One `threads.create` through the gateway as the user whose token is `token`."""
    with httpx.Client(base_url=gateway.url, headers={**bearer(token), **headers}, trust_env=False) as client:
        response = post(client, "threads.create", {"input": user_input(text)})
    assert response.status_code == 200, response.text
    return response


def last_chatkit_request(backend: Backend) -> dict[str, Any]:
    request: dict[str, Any] = [r for r in backend.requests() if r["path"] == "/chatkit"][-1]
    return request


def headers_of(request: Mapping[str, Any], name: str) -> list[str]:
    return [value for key, value in request["headers"] if key == name]


def one_header(request: Mapping[str, Any], name: str) -> str:
    values = headers_of(request, name)
    assert len(values) == 1, (name, values)
    return values[0]


def sha256_b64url(data: bytes) -> str:
    return jwt.utils.base64url_encode(hashlib.sha256(data).digest()).decode("ascii")


def user(idp: LoopbackIdP, sub: str = "alice", **claims: Any) -> str:
    return user_token(idp, sub, **claims)
