"""`/auth/verify`, the forward-auth answer for ingress controllers (SPEC 2, 3, 4, 10).

200 with identity headers (`X-User-Id`, `X-Auth-Request-User`, and the email pair when the token
has one), or the same 401/403 JSON as the ChatKit endpoint. Claims that are not printable ASCII
are percent-encoded, never sent raw. The ChatKit backend is never contacted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.support.checks import assert_error
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, user_claims, user_token
from tests.support.idp import LoopbackIdP

METHODS = [pytest.param("GET", id="GET"), pytest.param("POST", id="POST")]
IDENTITY_HEADERS = ("x-user-id", "x-auth-request-user", "x-user-email", "x-auth-request-email")


@pytest.fixture
def client(gateway: RunningGateway, clean_backend: Backend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=30) as http:
        yield http
    assert clean_backend.requests() == [], "/auth/verify must never contact the ChatKit backend"


def verify(client: httpx.Client, method: str, headers: dict[str, str]) -> httpx.Response:
    return client.request(method, "/auth/verify", headers=headers)


def own_origin(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def raw_header(response: httpx.Response, name: str) -> bytes:
    values = [value for key, value in response.headers.raw if key.lower() == name.encode()]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    """The gateway's JSON error, and no identity header an ingress could pass on."""
    assert_error(response, status, code)
    for name in IDENTITY_HEADERS:
        assert name not in response.headers


@pytest.mark.parametrize("method", METHODS)
def test_valid_bearer_gets_200_with_the_user_headers_and_no_email_when_the_token_has_none(
    client: httpx.Client, session_idp: LoopbackIdP, method: str
) -> None:
    response = verify(client, method, bearer(user_token(session_idp, "alice")))
    assert response.status_code == 200, response.text
    assert response.headers["x-user-id"] == "alice"
    assert response.headers["x-auth-request-user"] == "alice"
    assert "x-user-email" not in response.headers
    assert "x-auth-request-email" not in response.headers
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("method", METHODS)
def test_email_claim_is_answered_in_both_email_headers(
    client: httpx.Client, session_idp: LoopbackIdP, method: str
) -> None:
    response = verify(client, method, bearer(user_token(session_idp, "alice", email="alice@example.com")))
    assert response.status_code == 200, response.text
    assert response.headers["x-user-id"] == "alice"
    assert response.headers["x-user-email"] == "alice@example.com"
    assert response.headers["x-auth-request-email"] == "alice@example.com"


@pytest.mark.parametrize(
    ("sub", "email"),
    [
        pytest.param("alice\nX-Injected: yes", "alice@example.com", id="newline-in-sub"),
        pytest.param("alice\r\nX-Injected: yes", "a@example.com\r\nX-Injected: yes", id="crlf-in-sub-and-email"),
        pytest.param("alice", "a@example.com\nSet-Cookie: s=1", id="newline-in-email"),
        pytest.param("Zo\u00eb", "zo\u00eb@example.com", id="non-ascii"),
        pytest.param("\U0001f600-user", "\u00e9@\u00e9.example", id="emoji-and-accents"),
        pytest.param("tab\tnul\x00del\x7f", "x@example.com", id="control-characters"),
        # A literal `%` must be encoded too, or the header cannot be decoded back to the claim.
        pytest.param("zo%C3%AB", "100%@example.com", id="literal-percent"),
        # Leading and trailing blanks are dropped by every HTTP parser (RFC 9110 5.5 OWS).
        pytest.param(" alice", "alice@example.com ", id="surrounding-spaces"),
    ],
)
def test_identity_headers_are_printable_ascii_and_decode_back_to_the_exact_claim(
    client: httpx.Client, session_idp: LoopbackIdP, sub: str, email: str
) -> None:
    response = verify(client, "GET", bearer(user_token(session_idp, sub, email=email)))
    assert response.status_code == 200, response.text
    assert "x-injected" not in response.headers and "set-cookie" not in response.headers
    for name, claim in [
        ("x-user-id", sub),
        ("x-auth-request-user", sub),
        ("x-user-email", email),
        ("x-auth-request-email", email),
    ]:
        raw = raw_header(response, name)
        assert raw.isascii() and all(0x20 <= byte < 0x7F for byte in raw), (name, raw)
        assert unquote(raw.decode("ascii")) == claim


@pytest.mark.parametrize("method", METHODS)
def test_expired_token_gets_401_token_expired(client: httpx.Client, session_idp: LoopbackIdP, method: str) -> None:
    claims = user_claims(session_idp, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    response = verify(client, method, bearer(session_idp.sign(claims)))
    assert_refused(response, 401, "token_expired")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("method", METHODS)
def test_no_credentials_get_401_missing_credentials(client: httpx.Client, method: str) -> None:
    response = verify(client, method, {})
    assert_refused(response, 401, "missing_credentials")
    assert response.headers["www-authenticate"].startswith("Bearer realm=")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        pytest.param("garbage", "invalid_token", id="garbage"),
        pytest.param("a.b.c", "invalid_token", id="three-junk-segments"),
    ],
)
def test_invalid_bearer_gets_401(client: httpx.Client, token: str, code: str) -> None:
    assert_refused(verify(client, "GET", bearer(token)), 401, code)


Headers = dict[str, Any]
COOKIE_ORIGINS: list[Any] = [
    pytest.param(lambda own: {"origin": own}, 200, id="own-origin"),
    pytest.param(lambda own: {"referer": f"{own}/some/page?q=1"}, 200, id="own-referer"),
    pytest.param(lambda own: {}, 403, id="no-origin-no-referer"),
    pytest.param(lambda own: {"origin": "null"}, 403, id="origin-null"),
    pytest.param(lambda own: {"origin": "https://evil.example"}, 403, id="foreign-origin"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("origin_headers", "status"), COOKIE_ORIGINS)
def test_cookie_credential_follows_the_origin_rule(
    client: httpx.Client, session_idp: LoopbackIdP, origin_headers: Any, status: int, method: str
) -> None:
    headers = {"cookie": f"auth_token={user_token(session_idp, 'carol')}", **origin_headers(own_origin(client))}
    response = verify(client, method, headers)
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.headers["x-user-id"] == "carol"
        assert response.headers["x-auth-request-user"] == "carol"
    else:
        assert_refused(response, 403, "origin_not_allowed")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_get_405(client: httpx.Client, session_idp: LoopbackIdP, method: str) -> None:
    response = verify(client, method, bearer(user_token(session_idp)))
    assert_refused(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "POST"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("zo\u00eb", "zo%C3%AB", id="non-ascii-vs-its-literal-encoding"),
        pytest.param("alice\n", "alice%0A", id="newline-vs-its-literal-encoding"),
        pytest.param("alice", " alice", id="leading-space"),
        pytest.param("alice", "alice ", id="trailing-space"),
    ],
)
def test_two_different_users_never_get_the_same_user_header(
    client: httpx.Client, session_idp: LoopbackIdP, first: str, second: str
) -> None:
    answers = [verify(client, "GET", bearer(user_token(session_idp, sub))) for sub in (first, second)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].headers["x-user-id"] != answers[1].headers["x-user-id"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_envoy_ext_authz_style_path_and_method_are_answered(
    gateway: RunningGateway, session_idp: LoopbackIdP, method: str
) -> None:
    # Envoy's HTTP ext_authz calls {service path}{original path} with the original method.
    response = httpx.request(
        method, f"{gateway.url}/auth/verify/reports/42", headers={"authorization": f"Bearer {user_token(session_idp)}"}
    )
    assert response.status_code == 200 and response.headers["x-user-id"] == "user-1"
    refused = httpx.request(method, f"{gateway.url}/auth/verify/reports/42")
    assert refused.status_code == 401
