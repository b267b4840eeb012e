"""`[tokens]` through the real gateway: the published keys, the assertion and tool tokens the real
backend receives, and what a client can never do with them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import tomli_w

from gateway.backend_sdk import verify_identity
from gateway.outbound import FORWARDED_BODY_HEADERS, FORWARDED_UPLOAD_HEADERS, upstream_request_headers
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, gateway_config
from tests.support.idp import LoopbackIdP
from tests.tokens.setup import (
    ASSERTION_AUDIENCE,
    BILLING_AUDIENCE,
    CRM_AUDIENCE,
    chat,
    headers_of,
    last_chatkit_request,
    new_key_file,
    one_header,
    sha256_b64url,
    tokens_gateway,
    tokens_section,
    user,
)

IDENTITY_SECRET = "an-identity-secret-of-at-least-32-bytes"

FORGED = {
    "X-ChatKit-Assertion": "forged.assertion.value",
    "X-ChatKit-Token-crm": "forged.crm.token",
    "X-ChatKit-Token-other": "forged.other.token",
}


@pytest.fixture(scope="module")
def gateway_with_tokens(
    backend: Backend, session_idp: LoopbackIdP, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    key_file = new_key_file(tmp_path_factory.mktemp("keys"))
    # At debug level: no line at any level may carry a token.
    # With the signed identity too: it and the assertion bind the same body (one hash for both).
    upstream = {"identity_secret": IDENTITY_SECRET}
    with tokens_gateway(backend, session_idp, key_file, log_level="debug", upstream=upstream) as running:
        yield running


def jwks_client(gateway: RunningGateway) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(f"{gateway.url}/.well-known/jwks.json", cache_keys=False)


def verify(gateway: RunningGateway, token: str, audience: str) -> dict[str, object]:
    """As a backend or tool server in any language would: keys by `kid` from the published JWKS."""
    key = jwks_client(gateway).get_signing_key_from_jwt(token)
    claims: dict[str, object] = jwt.decode(
        token, key, algorithms=["ES256", "RS256"], audience=audience, issuer=gateway.url, options={"require": ["exp"]}
    )
    return claims


def test_jwks_and_discovery_are_published_for_verifiers(gateway_with_tokens: RunningGateway) -> None:
    jwks = httpx.get(f"{gateway_with_tokens.url}/.well-known/jwks.json", trust_env=False)
    assert jwks.status_code == 200
    assert jwks.headers["cache-control"] == "public, max-age=300"
    assert jwks.headers["content-type"] == "application/json"
    [key] = jwks.json()["keys"]
    assert key["alg"] == "ES256" and key["use"] == "sig" and key["kid"] and "d" not in key
    discovery = httpx.get(f"{gateway_with_tokens.url}/.well-known/openid-configuration", trust_env=False).json()
    assert discovery["issuer"] == gateway_with_tokens.url
    assert discovery["jwks_uri"] == f"{gateway_with_tokens.url}/.well-known/jwks.json"


def test_the_assertion_verifies_from_the_jwks_and_is_bound_to_the_body_the_backend_received(
    gateway_with_tokens: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    chat(gateway_with_tokens, user(session_idp, "alice", name="Alice", email="alice@example.com"))
    request = last_chatkit_request(clean_backend)
    claims = verify(gateway_with_tokens, one_header(request, "x-chatkit-assertion"), ASSERTION_AUDIENCE)

    metadata = request["json"]["metadata"]
    assert claims["sub"] == metadata["userId"] == "alice"
    assert claims["name"] == "Alice" and claims["email"] == "alice@example.com"
    assert claims["idp_iss"] == session_idp.issuer
    assert claims["chatkit"] == {
        "requestId": metadata["requestId"],
        "bodySha256": sha256_b64url(request["body"].encode()),
    }
    assert isinstance(claims["exp"], int) and isinstance(claims["iat"], int)
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert claims["jti"]
    signed = verify_identity(one_header(request, "x-chatkit-identity"), IDENTITY_SECRET, body=request["body"].encode())
    assert signed["bodySha256"] == claims["chatkit"]["bodySha256"]  # type: ignore[index]


def test_tool_tokens_are_per_resource_and_refused_by_other_audiences(
    gateway_with_tokens: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    chat(gateway_with_tokens, user(session_idp, "alice"))
    request = last_chatkit_request(clean_backend)
    crm, billing = one_header(request, "x-chatkit-token-crm"), one_header(request, "x-chatkit-token-billing")

    crm_claims = verify(gateway_with_tokens, crm, CRM_AUDIENCE)
    assert crm_claims["sub"] == "alice" and crm_claims["scope"] == "crm.read"
    assert crm_claims["act"] == {"sub": gateway_with_tokens.url}
    assert crm_claims["exp"] == crm_claims["iat"] + 300  # type: ignore[operator]
    assert verify(gateway_with_tokens, billing, BILLING_AUDIENCE)["scope"] == "billing.read billing.pay"
    with pytest.raises(jwt.InvalidAudienceError):
        verify(gateway_with_tokens, crm, BILLING_AUDIENCE)


def test_tool_tokens_are_reused_for_the_same_user_and_differ_between_users(
    gateway_with_tokens: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    seen = []
    for sub in ("alice", "alice", "bob"):
        chat(gateway_with_tokens, user(session_idp, sub))
        request = last_chatkit_request(clean_backend)
        seen.append((one_header(request, "x-chatkit-token-crm"), one_header(request, "x-chatkit-assertion")))
    (alice_1, assertion_1), (alice_2, assertion_2), (bob, _) = seen
    assert alice_1 == alice_2  # signed once, reused
    assert assertion_1 != assertion_2  # one per request
    assert bob != alice_1 and verify(gateway_with_tokens, bob, CRM_AUDIENCE)["sub"] == "bob"


def test_uploads_carry_the_assertion_without_body_hash_and_no_tool_tokens(
    gateway_with_tokens: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    response = httpx.post(
        f"{gateway_with_tokens.uploads_url}files",
        files={"file": ("a.txt", b"abc", "text/plain")},
        headers={**bearer(user(session_idp, "alice")), **FORGED},
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    [upload] = [r for r in clean_backend.requests() if r["path"] == "/uploads/files"]
    claims = verify(gateway_with_tokens, one_header(upload, "x-chatkit-assertion"), ASSERTION_AUDIENCE)
    assert claims["sub"] == "alice" and set(claims["chatkit"]) == {"requestId"}  # type: ignore[arg-type]
    assert not [name for name, _ in upload["headers"] if name.startswith("x-chatkit-token-")]


def test_a_client_cannot_send_the_gateways_token_headers(
    gateway_with_tokens: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    chat(gateway_with_tokens, user(session_idp, "alice"), **FORGED)
    request = last_chatkit_request(clean_backend)
    assert "forged" not in json.dumps(request["headers"])
    assert headers_of(request, "x-chatkit-token-other") == []
    verify(gateway_with_tokens, one_header(request, "x-chatkit-assertion"), ASSERTION_AUDIENCE)
    verify(gateway_with_tokens, one_header(request, "x-chatkit-token-crm"), CRM_AUDIENCE)


def test_no_minted_token_reaches_the_log_the_body_or_the_client(
    gateway_with_tokens: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    response = chat(gateway_with_tokens, user(session_idp, "alice"), text="/whoami")
    request = last_chatkit_request(clean_backend)
    minted = [
        one_header(request, name) for name in ("x-chatkit-assertion", "x-chatkit-token-crm", "x-chatkit-token-billing")
    ]
    log = gateway_with_tokens.log()
    assert '"status": 200' in log or '"status":200' in log  # the request was logged
    for token in minted:
        signature = token.rsplit(".", 1)[1]
        assert signature not in log
        assert signature not in request["body"]
        assert signature not in response.text
        assert signature not in json.dumps(dict(response.headers))


def test_without_a_signing_key_nothing_is_minted_and_the_documents_are_404(
    gateway: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    for path in ("/.well-known/jwks.json", "/.well-known/openid-configuration"):
        response = httpx.get(gateway.url + path, trust_env=False)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    chat(gateway, user(session_idp, "alice"), **FORGED)
    request = last_chatkit_request(clean_backend)
    assert not [name for name, _ in request["headers"] if name.startswith(("x-chatkit-token", "x-chatkit-assertion"))]


@pytest.mark.parametrize(
    ("kind", "message"),
    [("ec-p384", "an EC key on secp384r1 cannot sign"), ("rsa-1024", "an RSA key of 1024 bits cannot sign")],
)
def test_a_key_that_cannot_sign_stops_start_up_naming_it(
    backend: Backend, session_idp: LoopbackIdP, tmp_path: Path, kind: str, message: str
) -> None:
    key_file = new_key_file(tmp_path, kind=kind)
    config = gateway_config(backend.url, session_idp, {"tokens": tokens_section("https://chat.test", key_file)})
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"tokens.signing_key_file: {message}" in result.stderr


def test_rotation_old_tokens_verify_while_their_key_is_published_new_ones_use_the_new_key(
    backend: Backend, session_idp: LoopbackIdP, tmp_path: Path
) -> None:
    old_key, new_key = new_key_file(tmp_path, "old.pem"), new_key_file(tmp_path, "new.pem", kind="rsa")
    with tokens_gateway(backend, session_idp, old_key) as before:
        chat(before, user(session_idp, "alice"))
        old_token = one_header(last_chatkit_request(backend), "x-chatkit-token-crm")
        old_kid = jwt.get_unverified_header(old_token)["kid"]
        port = int(before.url.rsplit(":", 1)[1])
    with tokens_gateway(backend, session_idp, new_key, port=port, previous_key_files=[old_key]) as after:
        assert [k["kid"] for k in httpx.get(f"{after.url}/.well-known/jwks.json").json()["keys"]][1] == old_kid
        assert verify(after, old_token, CRM_AUDIENCE)["sub"] == "alice"
        chat(after, user(session_idp, "alice"))
        new_token = one_header(last_chatkit_request(backend), "x-chatkit-token-crm")
        assert jwt.get_unverified_header(new_token)["kid"] != old_kid
        assert jwt.get_unverified_header(new_token)["alg"] == "RS256"
        assert verify(after, new_token, CRM_AUDIENCE)["sub"] == "alice"
    with tokens_gateway(backend, session_idp, new_key, port=port) as retired:
        with pytest.raises(jwt.PyJWKClientError):
            verify(retired, old_token, CRM_AUDIENCE)


@pytest.mark.parametrize("allow", [FORWARDED_UPLOAD_HEADERS, FORWARDED_BODY_HEADERS], ids=["uploads", "chatkit"])
def test_the_upstream_allowlist_names_none_of_the_gateways_token_headers(allow: frozenset[bytes]) -> None:
    client = [(name.lower().encode(), value.encode()) for name, value in FORGED.items()]
    assert upstream_request_headers(client, allow=allow) == []
    assert not [name for name in allow if name.startswith((b"x-chatkit-token", b"x-chatkit-assertion"))]
