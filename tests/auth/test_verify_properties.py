"""Whatever arrives as a token, the verifier answers with an `AuthError` and nothing else."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.verify import TokenVerifier
from gateway.errors import AuthError
from tests.support.clock import FakeClock
from tests.support.keys import (
    ISSUER,
    StaticKeySource,
    auth_config,
    claims,
    ec_private,
    make_token,
    public_jwk,
    rsa_private,
)

RSA, EC = rsa_private("a"), ec_private("1")
VALID = make_token({"alg": "RS256", "kid": "rsa-a"}, claims(), RSA)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


SOURCE = StaticKeySource([public_jwk(RSA, "rsa-a"), public_jwk(EC, "ec-1")])
ERROR_CODES = {
    "invalid_token",
    "invalid_claims",
    "unknown_issuer",
    "unknown_key",
    "token_expired",
    "token_not_yet_valid",
}


def verifier() -> TokenVerifier:
    return TokenVerifier(auth_config(), {ISSUER: SOURCE}, clock=FakeClock())


async def _outcome(token: str) -> str:
    try:
        principal = await verifier().verify(token)
    except AuthError as error:
        assert error.code in ERROR_CODES
        return error.code
    return principal.subject


def outcome(token: str) -> str:
    """The error code, or the subject if the token verified; any other exception fails the test."""
    return asyncio.run(_outcome(token))


@SETTINGS
@given(st.text(max_size=400))
def test_any_text_is_an_auth_error(token: str) -> None:
    assert outcome(token) != "alice"


@SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_as_latin1_text_is_an_auth_error(raw: bytes) -> None:
    assert outcome(raw.decode("latin-1")) != "alice"


@SETTINGS
@given(st.lists(st.text(alphabet=B64URL + "=+/. ", max_size=60), min_size=1, max_size=6))
def test_any_dotted_base64ish_segments_are_an_auth_error(segments: list[str]) -> None:
    assert outcome(".".join(segments)) != "alice"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
HEADER_NAMES = st.sampled_from(["alg", "kid", "typ", "crit", "cty", "jku", "jwk", "x5u", "b64", "x"])
CLAIM_NAMES = st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "jti", "x"])


@SETTINGS
@given(header=st.dictionaries(HEADER_NAMES, JSON), payload=JSON)
def test_any_json_signed_by_a_known_key_is_an_auth_error(header: dict[str, object], payload: object) -> None:
    token = make_token({"alg": "RS256", "kid": "rsa-a", **header}, json.dumps(payload), RSA, alg="RS256")
    assert outcome(token) != "alice"


@SETTINGS
@given(changes=st.dictionaries(CLAIM_NAMES, JSON, min_size=1), drop=st.lists(CLAIM_NAMES, max_size=3))
def test_any_claims_over_a_valid_set_verify_or_are_an_auth_error(changes: dict[str, object], drop: list[str]) -> None:
    values = claims(**changes)
    for name in drop:
        values.pop(name, None)
    result = outcome(make_token({"alg": "RS256", "kid": "rsa-a"}, values, RSA))
    assert result in ERROR_CODES or result == values.get("sub")


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.characters(codec="ascii"))
def test_one_changed_character_of_a_valid_token_never_verifies(index: int, char: str) -> None:
    mutated = VALID[:index] + char + VALID[index + 1 :]
    if mutated == VALID:
        return
    assert outcome(mutated) != "alice"
