"""`gateway.backend_sdk`: what a ChatKit backend uses to believe the gateway, and only the gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.types import Message

from gateway.backend_sdk import (
    IDENTITY_HEADER,
    IDENTITY_SALT,
    InvalidIdentity,
    body_sha256,
    chatkit_context,
    context_from,
    header_value_of,
    mcp_headers,
    sign_identity,
    tool_token,
    verify_identity,
)
from gateway.identity import header_bytes_of

SECRET = "s" * 32
OTHER_SECRET = "o" * 32
ISSUER = "https://idp.example.com"
USER_INFO = {"id": "user-1", "name": "Ada Lovelace", "email": "ada@example.com", "issuer": ISSUER}
IDENTITY: dict[str, Any] = {"userId": "user-1", "userInfo": USER_INFO, "requestId": "req-123"}
PAGE = {"url": "https://app.example.com/docs", "title": "Docs"}


def chatkit_body(metadata: dict[str, Any] | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"type": "threads.list", "params": {}, **extra}
    body["metadata"] = {**IDENTITY, "pageContext": PAGE} if metadata is None else metadata
    return json.dumps(body).encode()


BODY = chatkit_body()
# What the gateway signs for BODY, and what `verify_identity` gives back.
SIGNED: dict[str, Any] = {**IDENTITY, "pageContext": PAGE, "issuer": ISSUER, "bodySha256": body_sha256(BODY)}


def signed_at(offset: int, payload: object = SIGNED, secret: str = SECRET, salt: str = IDENTITY_SALT) -> str:
    """A header value signed `offset` seconds from now: itsdangerous's own clock seam, not a patch."""

    class ShiftedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) + offset

    return URLSafeTimedSerializer(secret, salt=salt, signer=ShiftedSigner).dumps(payload)


def sign(body: bytes | None = BODY, secret: str | list[str] = SECRET, **changes: Any) -> str:
    """The header the gateway sends with `body` (None: an upload's), `changes` laid over the identity."""
    return sign_identity({**SIGNED, **changes}, secret, body=body)


def starlette_request(body: bytes, headers: list[tuple[str, str]]) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/chatkit",
        "query_string": b"",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def user_headers(**extra: str) -> dict[str, str]:
    """The identity headers the gateway sends for IDENTITY."""
    return {"X-User-Id": "user-1", "X-User-Email": "ada@example.com", **extra}


def gateway_headers(body: bytes = BODY, **extra: str) -> dict[str, str]:
    return {IDENTITY_HEADER: sign(body), **user_headers(), **extra}


# ------------------------------------------------------------------------------------- sign, verify


def test_signed_identity_verifies_to_the_same_dict() -> None:
    assert verify_identity(sign(), SECRET) == SIGNED
    assert verify_identity(sign(), SECRET, body=BODY) == SIGNED


def test_signing_keeps_only_the_identity_keys() -> None:
    value = sign_identity({**SIGNED, "accessToken": "tok", "bodySha256": "ignored"}, SECRET, body=BODY)
    assert verify_identity(value, SECRET) == SIGNED


def test_body_sha256_is_the_unpadded_base64url_digest_of_the_exact_bytes() -> None:
    assert body_sha256(b"") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert body_sha256(b"{}") != body_sha256(b"{} ")


def test_signed_value_is_header_safe() -> None:
    value = sign(userInfo={"id": "user-1", "name": "Zoë 你好\n"})
    assert value.isascii() and value.isprintable()


@pytest.mark.parametrize(
    ("identity", "missing"),
    [({"userInfo": {}, "requestId": "r", "issuer": ISSUER}, "userId"), ({**IDENTITY, "issuer": None}, "issuer")],
    ids=["no-user-id", "no-issuer"],
)
def test_signing_a_malformed_identity_is_a_programming_error(identity: dict[str, Any], missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        sign_identity(identity, SECRET, body=BODY)


def test_tampered_signature_is_refused() -> None:
    value = sign()
    payload, signature = value.rsplit(".", 1)
    # The first character carries six signature bits; the last one carries padding bits too.
    tampered = f"{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
    with pytest.raises(InvalidIdentity, match="not valid"):
        verify_identity(tampered, SECRET)


def test_payload_swapped_under_a_valid_signature_is_refused() -> None:
    genuine = sign()
    forged = sign(secret=OTHER_SECRET, userId="admin")
    # rsplit: a compressed payload itself starts with "." (itsdangerous's URL-safe format).
    spliced = forged.rsplit(".", 2)[0] + "." + genuine.rsplit(".", 2)[1] + "." + genuine.rsplit(".", 2)[2]
    assert spliced != genuine
    with pytest.raises(InvalidIdentity):
        verify_identity(spliced, SECRET)


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        (sign(secret=OTHER_SECRET), SECRET),
        (signed_at(0, salt="itsdangerous"), SECRET),
        ("", SECRET),
        ("garbage", SECRET),
        ("a.b.c", SECRET),
        ("Zm9v.AAAA.AAAA", SECRET),
    ],
    ids=["wrong-secret", "wrong-salt", "empty", "garbage", "three-dots", "bad-base64"],
)
def test_value_not_signed_by_the_gateway_is_refused(value: str, secret: str) -> None:
    with pytest.raises(InvalidIdentity):
        verify_identity(value, secret)


def test_expired_identity_is_refused() -> None:
    with pytest.raises(InvalidIdentity, match="age 61 > 60"):
        verify_identity(signed_at(-61), SECRET)


def test_identity_within_max_age_is_accepted() -> None:
    assert verify_identity(signed_at(-59), SECRET) == SIGNED
    assert verify_identity(signed_at(-300), SECRET, max_age=600) == SIGNED
    with pytest.raises(InvalidIdentity):
        verify_identity(signed_at(-30), SECRET, max_age=10)


def test_identity_signed_in_the_future_is_refused() -> None:
    with pytest.raises(InvalidIdentity, match="< 0"):
        verify_identity(signed_at(5), SECRET)


def _without(key: str) -> dict[str, Any]:
    return {name: value for name, value in SIGNED.items() if name != key}


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "user-1",
        {**SIGNED, "userId": 5},
        {**SIGNED, "userId": ""},
        {**SIGNED, "userInfo": "Ada"},
        {**SIGNED, "requestId": None},
        _without("requestId"),
        {**SIGNED, "pageContext": "docs"},
        _without("pageContext"),
        {**SIGNED, "issuer": ""},
        _without("issuer"),
        {**SIGNED, "bodySha256": 5},
        _without("bodySha256"),
        {"userId": "user-1", "userInfo": {}, "requestId": "r"},
    ],
    ids=[
        "list",
        "string",
        "numeric-user",
        "empty-user",
        "string-info",
        "null-request-id",
        "missing-request-id",
        "string-page-context",
        "missing-page-context",
        "empty-issuer",
        "missing-issuer",
        "numeric-body-hash",
        "missing-body-hash",
        "unbound-three-key-payload",
    ],
)
def test_signed_value_of_the_wrong_shape_is_refused(payload: object) -> None:
    with pytest.raises(InvalidIdentity):
        verify_identity(signed_at(0, payload), SECRET)


def test_rotated_secrets_accept_the_old_one_until_it_is_removed() -> None:
    old = sign(secret=OTHER_SECRET)
    assert verify_identity(old, [OTHER_SECRET, SECRET]) == SIGNED
    assert verify_identity(sign(secret=[OTHER_SECRET, SECRET]), SECRET) == SIGNED  # signs with the last
    with pytest.raises(InvalidIdentity):
        verify_identity(old, [SECRET])


@pytest.mark.parametrize("secret", ["", [], [SECRET, ""]], ids=["empty", "no-keys", "one-empty"])
def test_empty_secret_is_refused_rather_than_trusted(secret: str | list[str]) -> None:
    with pytest.raises(ValueError, match="empty"):
        verify_identity(sign(), secret)
    with pytest.raises(ValueError, match="empty"):
        context_from(gateway_headers(), BODY, secret=secret)


# ------------------------------------------------------------------------- the identity bound to its body

# Bodies an attacker who captured the header of BODY (a `threads.list`) would like it to vouch for:
# the same signed metadata, another op or thread, or the smallest change to the bytes.
REPLAYED_BODIES = [
    pytest.param(chatkit_body(type="threads.delete", params={"thread_id": "thr_victim"}), id="another-op"),
    pytest.param(chatkit_body(params={"after": "thr_2"}), id="other-params"),
    pytest.param(BODY + b" ", id="one-byte-appended"),
    pytest.param(BODY.replace(b'"params": {}', b'"params":{}'), id="same-json-other-bytes"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("body", REPLAYED_BODIES)
def test_verify_identity_refuses_a_header_replayed_with_another_body(body: bytes) -> None:
    header = sign()
    assert verify_identity(header, SECRET, body=BODY) == SIGNED
    with pytest.raises(InvalidIdentity, match="another body"):
        verify_identity(header, SECRET, body=body)


@pytest.mark.parametrize("body", REPLAYED_BODIES)
def test_chatkit_context_refuses_a_header_replayed_with_another_body(body: bytes) -> None:
    request = starlette_request(body, list(gateway_headers().items()))
    with pytest.raises(InvalidIdentity, match="another body"):
        asyncio.run(chatkit_context(request, secret=SECRET))


@given(st.binary(max_size=256), st.binary(max_size=256))
def test_a_header_vouches_for_its_own_body_and_no_other(signed_for: bytes, sent: bytes) -> None:
    header = sign(body=signed_for)
    assert verify_identity(header, SECRET, body=signed_for)["bodySha256"] == body_sha256(signed_for)
    if sent != signed_for:
        with pytest.raises(InvalidIdentity, match="another body"):
            verify_identity(header, SECRET, body=sent)


def test_an_uploads_header_has_no_body_hash_and_is_refused_wherever_a_body_is_checked() -> None:
    upload = sign(body=None, pageContext=None)
    assert verify_identity(upload, SECRET)["bodySha256"] is None  # an upload handler's check
    with pytest.raises(InvalidIdentity, match="without a body hash"):
        verify_identity(upload, SECRET, body=BODY)
    with pytest.raises(InvalidIdentity, match="without a body hash"):
        context_from({**gateway_headers(), IDENTITY_HEADER: upload}, BODY, secret=SECRET)


# --------------------------------------------------------------------------------- context, signed


def test_context_from_a_starlette_request_with_signed_identity() -> None:
    request = starlette_request(BODY, list(gateway_headers(Authorization="Bearer tok-abc").items()))
    context = asyncio.run(chatkit_context(request, secret=SECRET))
    assert context == {**IDENTITY, "pageContext": PAGE, "accessToken": "tok-abc"}
    assert asyncio.run(request.body()) == BODY  # still there for `server.process`


def test_signed_mode_requires_the_identity_header() -> None:
    with pytest.raises(InvalidIdentity, match="missing"):
        context_from(user_headers(), BODY, secret=SECRET)


@pytest.mark.parametrize(
    "metadata",
    [
        {**IDENTITY, "userId": "admin", "pageContext": PAGE},
        {**IDENTITY, "userInfo": {**USER_INFO, "email": "admin@example.com"}, "pageContext": PAGE},
        {**IDENTITY, "requestId": "req-other", "pageContext": PAGE},
        {**IDENTITY, "pageContext": {**PAGE, "title": "Admin console"}},
        dict(IDENTITY),
    ],
    ids=["user-id-changed", "user-info-changed", "request-id-changed", "page-context-changed", "page-context-dropped"],
)
def test_body_identity_that_differs_from_the_signed_one_is_refused(metadata: dict[str, Any]) -> None:
    # Signed for exactly this body, so only the comparison with the metadata can catch it.
    body = chatkit_body(metadata)
    with pytest.raises(InvalidIdentity, match="differs"):
        context_from(gateway_headers(body), body, secret=SECRET)


@pytest.mark.parametrize(
    "headers",
    [{"X-User-Id": "admin"}, {"X-User-Email": "admin@example.com"}],
    ids=["x-user-id", "x-user-email"],
)
def test_signed_mode_still_checks_the_user_headers(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidIdentity, match="differs"):
        context_from(gateway_headers(**headers), BODY, secret=SECRET)


@pytest.mark.parametrize("name", ["x-chatkit-identity", "X-CHATKIT-IDENTITY", "X-ChatKit-Identity"])
def test_header_names_match_in_any_case(name: str) -> None:
    context = context_from({name: sign()}, BODY, secret=SECRET)
    assert context["userId"] == "user-1"


def test_two_different_identity_headers_are_refused() -> None:
    headers = [(IDENTITY_HEADER, sign()), (IDENTITY_HEADER, sign(userId="admin"))]
    with pytest.raises(InvalidIdentity, match="conflicting"):
        asyncio.run(chatkit_context(starlette_request(BODY, headers), secret=SECRET))


# ------------------------------------------------------------------------------- context, trusted


def test_trusted_network_mode_reads_the_body_metadata() -> None:
    context = context_from({"x-user-id": "user-1", "x-user-email": "ada@example.com"}, BODY)
    assert context == {**IDENTITY, "pageContext": PAGE, "accessToken": None}


NO_EMAIL = {**IDENTITY, "userInfo": {"id": "user-1", "issuer": ISSUER}}


@pytest.mark.parametrize(
    ("headers", "metadata", "message"),
    [
        ({"X-User-Email": "ada@example.com"}, IDENTITY, "X-User-Id is missing"),
        ({"X-User-Id": "someone-else", "X-User-Email": "ada@example.com"}, IDENTITY, "X-User-Id differs"),
        ({"X-User-Id": "user-1"}, IDENTITY, "X-User-Email is missing"),
        ({"X-User-Id": "user-1", "X-User-Email": "mallory@example.com"}, IDENTITY, "X-User-Email differs"),
        ({"X-User-Id": "user-1", "X-User-Email": "ada@example.com"}, NO_EMAIL, "X-User-Email differs"),
    ],
    ids=["no-x-user-id", "other-user", "email-only-in-body", "other-email", "email-only-in-header"],
)
def test_trusted_network_mode_refuses_headers_that_disagree_with_the_body(
    headers: dict[str, str], metadata: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidIdentity, match=message):
        context_from(headers, chatkit_body(metadata))


def test_trusted_network_mode_without_an_email_on_either_side() -> None:
    assert context_from({"X-User-Id": "user-1"}, chatkit_body(NO_EMAIL))["userInfo"] == NO_EMAIL["userInfo"]


def test_user_headers_are_compared_in_the_gateways_header_encoding() -> None:
    metadata = {**IDENTITY, "userId": "zoë\n", "userInfo": {"email": "zoë@example.com"}}
    headers = {"X-User-Id": "zo%C3%AB%0A", "X-User-Email": "zo%C3%AB@example.com"}
    assert context_from(headers, chatkit_body(metadata))["userId"] == "zoë\n"


@pytest.mark.parametrize(
    "body",
    [
        chatkit_body({"userInfo": {}, "requestId": "r"}),
        chatkit_body({**IDENTITY, "userId": 7}),
        chatkit_body({**IDENTITY, "userInfo": None}),
        json.dumps({"type": "threads.list", "params": {}}).encode(),
        json.dumps({"type": "threads.list", "metadata": "user-1"}).encode(),
        b"[]",
        b"{not json",
        b"\xff",
    ],
    ids=[
        "no-user-id",
        "numeric-user-id",
        "no-user-info",
        "no-metadata",
        "string-metadata",
        "array",
        "bad-json",
        "bad-utf8",
    ],
)
def test_body_without_a_gateway_identity_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidIdentity):
        context_from(user_headers(), body)


def test_page_context_that_is_not_an_object_becomes_none() -> None:
    assert context_from(user_headers(), chatkit_body({**IDENTITY, "pageContext": "x"}))["pageContext"] is None
    assert context_from(user_headers(), chatkit_body(dict(IDENTITY)))["pageContext"] is None


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        ("Bearer tok-1", "tok-1"),
        ("bearer tok-1", "tok-1"),
        ("Basic dTpw", None),
        ("Bearer ", None),
        ("Bearer a b", None),
    ],
    ids=["bearer", "lower-case-scheme", "basic", "empty", "space-in-token"],
)
def test_access_token_is_the_forwarded_bearer_token(authorization: str, token: str | None) -> None:
    assert context_from(user_headers(Authorization=authorization), BODY)["accessToken"] == token


# ------------------------------------------------------------------------------------- mcp_headers


def test_mcp_headers_carry_the_token_and_the_user() -> None:
    context = context_from(user_headers(Authorization="Bearer tok-1"), BODY)
    assert mcp_headers(context) == {"Authorization": "Bearer tok-1", "X-User-Id": "user-1"}


def test_mcp_headers_without_a_forwarded_token_carry_only_the_user() -> None:
    assert mcp_headers(context_from(user_headers(), BODY)) == {"X-User-Id": "user-1"}


def test_mcp_headers_are_header_safe_for_any_user_id() -> None:
    headers = mcp_headers({"userId": "zoë\r\nX-Admin: 1", "accessToken": None})
    assert headers == {"X-User-Id": "zo%C3%AB%0D%0AX-Admin:%201"}


# -------------------------------------------------------------------------------------- tool_token


def test_tool_token_is_the_gateways_header_for_that_tool_from_a_starlette_request() -> None:
    request = starlette_request(
        chatkit_body(), [("X-ChatKit-Token-crm", "crm.jwt.value"), ("X-ChatKit-Token-billing", "b")]
    )
    assert tool_token(request, "crm") == "crm.jwt.value"
    assert tool_token(request, "billing") == "b"
    assert tool_token(request, "other") is None


@pytest.mark.parametrize("name", ["x-chatkit-token-crm", "X-CHATKIT-TOKEN-CRM"])
def test_tool_token_from_a_headers_mapping_in_any_case(name: str) -> None:
    assert tool_token({name: "crm.jwt.value"}, "crm") == "crm.jwt.value"


def test_tool_token_absent_empty_or_ambiguous_is_none() -> None:
    assert tool_token({}, "crm") is None
    assert tool_token({"x-chatkit-token-crm": ""}, "crm") is None
    request = starlette_request(chatkit_body(), [("X-ChatKit-Token-crm", "one"), ("X-ChatKit-Token-crm", "two")])
    assert tool_token(request, "crm") is None


@given(st.text())
def test_header_encoding_matches_the_gateways(value: str) -> None:
    assert header_value_of(value).encode("ascii") == header_bytes_of(value)


# ---------------------------------------------------------------------------------------- imports


def test_importing_the_module_does_not_load_the_gateway_runtime() -> None:
    code = "import json, sys, gateway.backend_sdk; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    modules = set(json.loads(result.stdout))
    assert {name for name in modules if name.startswith("gateway")} == {"gateway", "gateway.backend_sdk"}
    for heavy in ("httpx", "jose", "uvicorn", "starlette", "pydantic"):
        assert heavy not in modules, f"{heavy} imported by gateway.backend_sdk"


def test_the_former_module_name_still_serves_existing_backends() -> None:
    import gateway.backend as former
    import gateway.backend_sdk as sdk

    assert former.__all__ == sdk.__all__
    for name in sdk.__all__:
        assert getattr(former, name) is getattr(sdk, name)
