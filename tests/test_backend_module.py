"""`gateway.backend`: what a ChatKit backend uses to believe the gateway, and only the gateway."""

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

from gateway.backend import (
    IDENTITY_HEADER,
    IDENTITY_SALT,
    InvalidIdentity,
    chatkit_context,
    context_from,
    header_value_of,
    mcp_headers,
    sign_identity,
    tool_token,
    verify_identity,
)
from gateway.identity import header_value_of as gateway_header_value_of

SECRET = "s" * 32
OTHER_SECRET = "o" * 32
IDENTITY: dict[str, Any] = {
    "userId": "user-1",
    "userInfo": {"id": "user-1", "name": "Ada Lovelace", "email": "ada@example.com"},
    "requestId": "req-123",
}
PAGE = {"url": "https://app.example.com/docs", "title": "Docs"}


def signed_at(offset: int, payload: object = IDENTITY, secret: str = SECRET, salt: str = IDENTITY_SALT) -> str:
    """A header value signed `offset` seconds from now: itsdangerous's own clock seam, not a patch."""

    class ShiftedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) + offset

    return URLSafeTimedSerializer(secret, salt=salt, signer=ShiftedSigner).dumps(payload)


def chatkit_body(metadata: dict[str, Any] | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"type": "threads.list", "params": {}, **extra}
    body["metadata"] = {**IDENTITY, "pageContext": PAGE} if metadata is None else metadata
    return json.dumps(body).encode()


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


def gateway_headers(**extra: str) -> dict[str, str]:
    return {IDENTITY_HEADER: sign_identity(IDENTITY, SECRET), "X-User-Id": "user-1", **extra}


# ------------------------------------------------------------------------------------- sign, verify


def test_signed_identity_verifies_to_the_same_dict() -> None:
    assert verify_identity(sign_identity(IDENTITY, SECRET), SECRET) == IDENTITY


def test_signing_keeps_only_the_identity_keys() -> None:
    value = sign_identity({**IDENTITY, "pageContext": PAGE, "accessToken": "tok"}, SECRET)
    assert verify_identity(value, SECRET) == IDENTITY


def test_signed_value_is_header_safe() -> None:
    value = sign_identity({**IDENTITY, "userInfo": {"id": "user-1", "name": "Zoë 你好\n"}}, SECRET)
    assert value.isascii() and value.isprintable()


def test_signing_a_malformed_identity_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="userId"):
        sign_identity({"userInfo": {}, "requestId": "r"}, SECRET)


def test_tampered_signature_is_refused() -> None:
    value = sign_identity(IDENTITY, SECRET)
    payload, signature = value.rsplit(".", 1)
    # The first character carries six signature bits; the last one carries padding bits too.
    tampered = f"{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
    with pytest.raises(InvalidIdentity, match="not valid"):
        verify_identity(tampered, SECRET)


def test_payload_swapped_under_a_valid_signature_is_refused() -> None:
    genuine = sign_identity(IDENTITY, SECRET)
    forged = sign_identity({**IDENTITY, "userId": "admin"}, OTHER_SECRET)
    # rsplit: a compressed payload itself starts with "." (itsdangerous's URL-safe format).
    spliced = forged.rsplit(".", 2)[0] + "." + genuine.rsplit(".", 2)[1] + "." + genuine.rsplit(".", 2)[2]
    assert spliced != genuine
    with pytest.raises(InvalidIdentity):
        verify_identity(spliced, SECRET)


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        (sign_identity(IDENTITY, OTHER_SECRET), SECRET),
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
    assert verify_identity(signed_at(-59), SECRET) == IDENTITY
    assert verify_identity(signed_at(-300), SECRET, max_age=600) == IDENTITY
    with pytest.raises(InvalidIdentity):
        verify_identity(signed_at(-30), SECRET, max_age=10)


def test_identity_signed_in_the_future_is_refused() -> None:
    with pytest.raises(InvalidIdentity, match="< 0"):
        verify_identity(signed_at(5), SECRET)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "user-1",
        {**IDENTITY, "userId": 5},
        {**IDENTITY, "userId": ""},
        {**IDENTITY, "userInfo": "Ada"},
        {**IDENTITY, "requestId": None},
        {"userId": "user-1", "userInfo": {}},
    ],
    ids=["list", "string", "numeric-user", "empty-user", "string-info", "null-request-id", "missing-request-id"],
)
def test_signed_value_of_the_wrong_shape_is_refused(payload: object) -> None:
    with pytest.raises(InvalidIdentity):
        verify_identity(signed_at(0, payload), SECRET)


def test_rotated_secrets_accept_the_old_one_until_it_is_removed() -> None:
    old = sign_identity(IDENTITY, OTHER_SECRET)
    assert verify_identity(old, [OTHER_SECRET, SECRET]) == IDENTITY
    assert verify_identity(sign_identity(IDENTITY, [OTHER_SECRET, SECRET]), SECRET) == IDENTITY  # signs with the last
    with pytest.raises(InvalidIdentity):
        verify_identity(old, [SECRET])


@pytest.mark.parametrize("secret", ["", [], [SECRET, ""]], ids=["empty", "no-keys", "one-empty"])
def test_empty_secret_is_refused_rather_than_trusted(secret: str | list[str]) -> None:
    with pytest.raises(ValueError, match="empty"):
        verify_identity(sign_identity(IDENTITY, SECRET), secret)
    with pytest.raises(ValueError, match="empty"):
        context_from(gateway_headers(), chatkit_body(), secret=secret)


# --------------------------------------------------------------------------------- context, signed


def test_context_from_a_starlette_request_with_signed_identity() -> None:
    body = chatkit_body()
    request = starlette_request(body, list(gateway_headers(Authorization="Bearer tok-abc").items()))
    context = asyncio.run(chatkit_context(request, secret=SECRET))
    assert context == {**IDENTITY, "pageContext": PAGE, "accessToken": "tok-abc"}
    assert asyncio.run(request.body()) == body  # still there for `server.process`


def test_signed_mode_requires_the_identity_header() -> None:
    with pytest.raises(InvalidIdentity, match="missing"):
        context_from({"X-User-Id": "user-1"}, chatkit_body(), secret=SECRET)


@pytest.mark.parametrize(
    "metadata",
    [
        {**IDENTITY, "userId": "admin"},
        {**IDENTITY, "userInfo": {**IDENTITY["userInfo"], "email": "admin@example.com"}},
        {**IDENTITY, "requestId": "req-other"},
    ],
    ids=["user-id-changed", "user-info-changed", "replayed-on-another-request"],
)
def test_body_identity_that_differs_from_the_signed_one_is_refused(metadata: dict[str, Any]) -> None:
    headers = {IDENTITY_HEADER: sign_identity(IDENTITY, SECRET)}
    with pytest.raises(InvalidIdentity, match="differs"):
        context_from(headers, chatkit_body(metadata), secret=SECRET)


def test_signed_mode_still_checks_x_user_id() -> None:
    with pytest.raises(InvalidIdentity, match="X-User-Id"):
        context_from(gateway_headers(**{"X-User-Id": "admin"}), chatkit_body(), secret=SECRET)


@pytest.mark.parametrize("name", ["x-chatkit-identity", "X-CHATKIT-IDENTITY", "X-ChatKit-Identity"])
def test_header_names_match_in_any_case(name: str) -> None:
    context = context_from({name: sign_identity(IDENTITY, SECRET)}, chatkit_body(), secret=SECRET)
    assert context["userId"] == "user-1"


def test_two_different_identity_headers_are_refused() -> None:
    other = sign_identity({**IDENTITY, "userId": "admin"}, SECRET)
    headers = [(IDENTITY_HEADER, sign_identity(IDENTITY, SECRET)), (IDENTITY_HEADER, other)]
    with pytest.raises(InvalidIdentity, match="conflicting"):
        asyncio.run(chatkit_context(starlette_request(chatkit_body(), headers), secret=SECRET))


# ------------------------------------------------------------------------------- context, trusted


def test_trusted_network_mode_reads_the_body_metadata() -> None:
    context = context_from({"x-user-id": "user-1"}, chatkit_body())
    assert context == {**IDENTITY, "pageContext": PAGE, "accessToken": None}


def test_trusted_network_mode_without_x_user_id_header() -> None:
    assert context_from({}, chatkit_body())["userId"] == "user-1"


def test_trusted_network_mode_refuses_x_user_id_that_differs() -> None:
    with pytest.raises(InvalidIdentity, match="X-User-Id"):
        context_from({"X-User-Id": "someone-else"}, chatkit_body())


def test_x_user_id_is_compared_in_the_gateways_header_encoding() -> None:
    metadata = {**IDENTITY, "userId": "zoë\n"}
    assert context_from({"X-User-Id": "zo%C3%AB%0A"}, chatkit_body(metadata))["userId"] == "zoë\n"


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
        context_from({}, body)


def test_page_context_that_is_not_an_object_becomes_none() -> None:
    assert context_from({}, chatkit_body({**IDENTITY, "pageContext": "x"}))["pageContext"] is None
    assert context_from({}, chatkit_body(dict(IDENTITY)))["pageContext"] is None


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
    assert context_from({"Authorization": authorization}, chatkit_body())["accessToken"] == token


# ------------------------------------------------------------------------------------- mcp_headers


def test_mcp_headers_carry_the_token_and_the_user() -> None:
    context = context_from({"Authorization": "Bearer tok-1"}, chatkit_body())
    assert mcp_headers(context) == {"Authorization": "Bearer tok-1", "X-User-Id": "user-1"}


def test_mcp_headers_without_a_forwarded_token_carry_only_the_user() -> None:
    assert mcp_headers(context_from({}, chatkit_body())) == {"X-User-Id": "user-1"}


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
    assert header_value_of(value).encode("ascii") == gateway_header_value_of(value)


# ---------------------------------------------------------------------------------------- imports


def test_importing_the_module_does_not_load_the_gateway_runtime() -> None:
    code = "import json, sys, gateway.backend; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    modules = set(json.loads(result.stdout))
    assert {name for name in modules if name.startswith("gateway")} == {"gateway", "gateway.backend"}
    for heavy in ("httpx", "jose", "uvicorn", "starlette", "pydantic"):
        assert heavy not in modules, f"{heavy} imported by gateway.backend"
