"""Minted tokens in-process, with a clock that moves only when told: claims, reuse and renewal."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import jwt
import pytest

from gateway.config import TokenResourceConfig, TokensConfig
from gateway.tokens.mint import ASSERTION_SECONDS, Minter, body_digest
from gateway.tokens.signing import SigningKey, load_signing_key
from tests.support.clock import FakeClock
from tests.tokens.keyfiles import new_key, write_key

ISSUER = "https://chat.example.com"
CRM = TokenResourceConfig(name="crm", audience="https://mcp.example.com/crm", scopes=("crm.read", "crm.write"))
BILLING = TokenResourceConfig(name="billing", audience="https://mcp.example.com/billing", lifetime_seconds=60)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return load_signing_key(write_key(tmp_path_factory.mktemp("keys"), "key.pem", new_key("ec")))


def minter(key: SigningKey, clock: FakeClock, **settings: object) -> Minter:
    config = TokensConfig.model_validate(
        {
            "issuer": ISSUER,
            "signing_key_file": "unused.pem",
            "assertion_audience": "chatkit-backend",
            "resources": [CRM, BILLING],
            **settings,
        }
    )
    return Minter(config, key, clock)


def decode(token: str, key: SigningKey, audience: str, clock: FakeClock) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        token,
        jwt.PyJWK.from_dict(dict(key.jwk)),
        algorithms=["ES256"],
        audience=audience,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


def test_the_assertion_carries_who_and_which_request_and_lives_at_most_60_seconds(key: SigningKey) -> None:
    clock = FakeClock(1_800_000_000.5)
    body = b'{"type":"threads.create","metadata":{"userId":"idp-a:alice"}}'
    token = minter(key, clock).assertion(
        "idp-a:alice", "Alice", "a@example.com", "https://idp", "req-1", body_digest(body)
    )
    claims = decode(token, key, "chatkit-backend", clock)
    assert claims.pop("jti")
    assert claims == {
        "iss": ISSUER,
        "aud": "chatkit-backend",
        "sub": "idp-a:alice",
        "iat": 1_800_000_000,
        "exp": 1_800_000_000 + ASSERTION_SECONDS,
        "name": "Alice",
        "email": "a@example.com",
        "idp_iss": "https://idp",
        "chatkit": {
            "requestId": "req-1",
            "bodySha256": base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode(),
        },
    }


def test_an_upload_assertion_has_no_body_hash_and_unknown_claims_are_left_out(key: SigningKey) -> None:
    clock = FakeClock()
    claims = decode(
        minter(key, clock).assertion("bob", None, None, "https://idp", "r", None), key, "chatkit-backend", clock
    )
    assert "name" not in claims and "email" not in claims
    assert claims["chatkit"] == {"requestId": "r"}


def test_every_assertion_has_its_own_jti(key: SigningKey) -> None:
    clock = FakeClock()
    mint = minter(key, clock)
    jtis = {
        decode(mint.assertion("u", None, None, "i", "r", None), key, "chatkit-backend", clock)["jti"] for _ in range(50)
    }
    assert len(jtis) == 50


def test_a_tool_token_is_bound_to_its_resource_and_names_the_gateway_as_actor(key: SigningKey) -> None:
    clock = FakeClock(1_800_000_000)
    claims = decode(minter(key, clock).tool_token("alice", CRM), key, CRM.audience, clock)
    assert claims["sub"] == "alice"
    assert claims["scope"] == "crm.read crm.write"
    assert claims["iat"] == 1_800_000_000
    assert claims["exp"] == 1_800_000_000 + 300
    assert claims["act"] == {"sub": ISSUER}
    with pytest.raises(jwt.InvalidAudienceError):
        decode(minter(key, clock).tool_token("alice", CRM), key, BILLING.audience, clock)
    assert "scope" not in decode(minter(key, clock).tool_token("alice", BILLING), key, BILLING.audience, clock)


def test_a_tool_token_is_reused_while_more_than_half_its_lifetime_remains(key: SigningKey) -> None:
    clock = FakeClock(1_800_000_000)
    mint = minter(key, clock)
    first = mint.tool_token("alice", CRM)
    clock.advance(149)
    assert mint.tool_token("alice", CRM) == first
    clock.advance(1)
    renewed = mint.tool_token("alice", CRM)
    assert renewed != first
    assert decode(renewed, key, CRM.audience, clock)["iat"] == 1_800_000_150


def test_tokens_are_kept_per_user_and_per_resource(key: SigningKey) -> None:
    clock = FakeClock()
    mint = minter(key, clock)
    tokens = {mint.tool_token(user, resource) for user in ("alice", "bob") for resource in (CRM, BILLING)}
    assert len(tokens) == 4
    clock.advance(30)  # half of billing's 60 s: billing renewed, crm kept
    assert mint.tool_token("alice", BILLING) not in tokens
    assert mint.tool_token("alice", CRM) in tokens


def test_the_cache_is_bounded(key: SigningKey) -> None:
    clock = FakeClock()
    mint = minter(key, clock, cache_size=3)
    first = mint.tool_token("user-0", CRM)
    for index in range(1, 10):
        mint.tool_token(f"user-{index}", CRM)
    assert mint.tool_token("user-0", CRM) != first  # evicted, minted again


def test_config_refuses_tokens_without_a_key_and_a_key_without_an_issuer() -> None:
    with pytest.raises(ValueError, match="signing_key_file is required"):
        TokensConfig.model_validate({"assertion_audience": "backend"})
    with pytest.raises(ValueError, match="signing_key_file is required"):
        TokensConfig.model_validate({"resources": [{"name": "crm", "audience": "https://crm"}]})
    with pytest.raises(ValueError, match="issuer is required"):
        TokensConfig.model_validate({"signing_key_file": "k.pem"})


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ({"name": "CRM", "audience": "a"}, "lower-case"),
        ({"name": "crm_x", "audience": "a"}, "lower-case"),
        ({"name": "crm", "audience": "a", "lifetime_seconds": 3601}, "less than or equal to 3600"),
        ({"name": "crm", "audience": "a", "mode": "exchange"}, "needs token_endpoint, client_id, client_secret_file"),
        ({"name": "crm", "audience": "a", "mode": "other"}, "'mint' or 'exchange'"),
    ],
    ids=["upper-case", "underscore", "lifetime", "exchange-incomplete", "mode"],
)
def test_resource_entries_are_checked(resource: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        TokensConfig.model_validate({"issuer": ISSUER, "signing_key_file": "k.pem", "resources": [resource]})
