"""Revocation from tests: the admin API, logout tokens as an identity provider signs them, and a
gateway config with revocation on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.support.gateway import Issuer, bearer, gateway_config, issuer_entry

ADMIN_TOKEN = "test-admin-token-" + "x" * 24
LOGOUT_AUDIENCE = "chatkit-gateway-client"
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def write_admin_token(folder: Path) -> str:
    path = folder / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n", encoding="utf-8")
    return str(path)


def revocation_config(
    upstream_base: str, idp: Issuer, admin_token_file: str | None, **revocation: Any
) -> dict[str, Any]:
    """Revocation on (memory store unless given), back-channel logout accepted for `idp`."""
    settings: dict[str, Any] = {"enabled": True, **revocation}
    if admin_token_file is not None:
        settings["admin_token_file"] = admin_token_file
    return gateway_config(
        upstream_base,
        idp,
        {
            "auth": {"issuers": [issuer_entry(idp, backchannel_audience=LOGOUT_AUDIENCE)]},
            "revocation": settings,
        },
    )


def admin(
    base_url: str, body: Mapping[str, Any] | bytes, *, method: str = "POST", token: str | None = ADMIN_TOKEN
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    if isinstance(body, bytes):
        content = body
        headers["content-type"] = "application/json"
        return httpx.request(method, f"{base_url}/admin/revocations", content=content, headers=headers, trust_env=False)
    return httpx.request(method, f"{base_url}/admin/revocations", json=dict(body), headers=headers, trust_env=False)


def ask(base_url: str, token: str, path: str = "/chatkit") -> httpx.Response:
    """One request as `token`'s user: a ChatKit `threads.list`, or a forward-auth check."""
    if path == "/auth/verify":
        return httpx.get(f"{base_url}/auth/verify", headers=bearer(token), trust_env=False)
    body = {"type": "threads.list", "params": {}}
    return httpx.post(f"{base_url}{path}", json=body, headers=bearer(token), trust_env=False)


def logout_claims(idp: Issuer, **claims: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": idp.issuer,
        "aud": LOGOUT_AUDIENCE,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        **claims,
    }


def logout(base_url: str, token: str) -> httpx.Response:
    return httpx.post(f"{base_url}/auth/backchannel-logout", data={"logout_token": token}, trust_env=False)
