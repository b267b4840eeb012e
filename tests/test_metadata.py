"""What the backend receives: the gateway's identity and page context, beyond any client's power to forge."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.backend_sdk import InvalidIdentity, body_sha256, context_from, verify_identity
from tests.support.chatkit import REQUESTS, post, user_input
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP

SECRET = "s3cret-for-tests-only-0123456789abcdef"
CLIENT_METADATA = {"threadHint": "kept", "userId": "admin", "userInfo": {"id": "admin"}, "requestId": "forged"}


def recorded(backend: Backend, op: str) -> dict[str, Any]:
    """The last ChatKit request of type `op` that reached the backend."""
    bodies = [r for r in backend.requests() if r["path"] == "/chatkit" and (r["json"] or {}).get("type") == op]
    assert bodies, f"no {op} reached the backend"
    return bodies[-1]


@pytest.fixture(scope="module")
def identity_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    config = gateway_config(
        backend.url,
        session_idp,
        {
            "upstream": {"identity_secret": SECRET, "forward_access_token": True},
            "identity": {"extra_claims": ["groups"]},
            "security": {"allowed_origins": ["https://app.example.com"]},
        },
    )
    with start_gateway(config) as running:
        yield running


@pytest.fixture
def rich_token(session_idp: LoopbackIdP) -> str:
    return user_token(session_idp, sub="u-42", name="Ada Lovelace", email="ada@example.com", groups=["eng"])


@pytest.fixture
def client(identity_gateway: RunningGateway, clean_backend: Backend, rich_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=identity_gateway.url, headers=bearer(rich_token), trust_env=False, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def user_info(session_idp: LoopbackIdP) -> dict[str, Any]:
    """`userInfo` for `rich_token`: its issuer is the token's `iss`; `groups` is an extra claim."""
    return {
        "id": "u-42",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "issuer": session_idp.issuer,
        "groups": ["eng"],
    }


@pytest.mark.parametrize("op", list(REQUESTS))
def test_every_request_type_carries_exactly_the_gateways_identity(
    op: str, client: httpx.Client, clean_backend: Backend, rich_token: str, user_info: dict[str, Any]
) -> None:
    build, _ = REQUESTS[op]
    params = build(client)
    response = client.post("/chatkit", json={"type": op, "params": params, "metadata": CLIENT_METADATA})
    assert response.status_code == 200, response.text

    sent = recorded(clean_backend, op)
    request_id = response.headers["x-request-id"]
    assert sent["json"]["metadata"] == {
        "threadHint": "kept",
        "userId": "u-42",
        "userInfo": user_info,
        "requestId": request_id,
    }
    assert sent["json"]["params"] == params
    headers = dict(sent["headers"])
    assert headers["x-user-id"] == "u-42" and headers["x-user-email"] == "ada@example.com"
    assert headers["authorization"] == f"Bearer {rich_token}"
    received = sent["body"].encode()
    signed = verify_identity(headers["x-chatkit-identity"], SECRET, body=received)
    assert signed == {
        "userId": "u-42",
        "userInfo": user_info,
        "pageContext": None,
        "requestId": request_id,
        "issuer": user_info["issuer"],
        "bodySha256": body_sha256(received),  # of the exact bytes the backend received
    }
    assert int(headers["content-length"]) == sent["body_length"]


SPOOFED_HEADERS = [
    pytest.param({"X-User-Id": "admin"}, id="x-user-id"),
    pytest.param({"x-user-id": "admin", "X-USER-ID": "root"}, id="case-variants"),
    pytest.param({"x_user_id": "admin"}, id="underscore"),
    pytest.param({"X-User-Email": "admin@evil.example"}, id="x-user-email"),
    pytest.param({"x_user_email": "admin@evil.example"}, id="underscore-email"),
    pytest.param({"X-ChatKit-Identity": "forged.signature"}, id="identity-header"),
    pytest.param({"X-Forwarded-User": "admin"}, id="x-forwarded-user"),
    pytest.param({"X-Auth-Request-User": "admin"}, id="x-auth-request-user"),
    pytest.param({"X-Authenticated-User": "admin"}, id="x-authenticated-user"),
]


@pytest.mark.parametrize("spoofed", SPOOFED_HEADERS)
def test_spoofed_identity_headers_never_reach_the_backend(
    spoofed: dict[str, str], client: httpx.Client, clean_backend: Backend
) -> None:
    response = client.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=spoofed)
    assert response.status_code == 200

    headers = recorded(clean_backend, "threads.list")["headers"]
    values = [value for _, value in headers]
    assert "admin" not in values and "root" not in values and "forged.signature" not in values
    names = [name for name, _ in headers]
    assert names.count("x-user-id") == 1 and names.count("x-chatkit-identity") == 1
    assert not {"x_user_id", "x_user_email", "x-forwarded-user", "x-auth-request-user", "x-authenticated-user"} & set(
        names
    )


def test_spoofed_body_identity_is_replaced_and_other_metadata_kept(
    client: httpx.Client, clean_backend: Backend, user_info: dict[str, Any]
) -> None:
    client.post("/chatkit", json={"type": "threads.list", "params": {}, "metadata": {**CLIENT_METADATA, "x": [1, 2]}})
    metadata = recorded(clean_backend, "threads.list")["json"]["metadata"]
    assert metadata["userId"] == "u-42" and metadata["userInfo"] == user_info and metadata["x"] == [1, 2]
    assert metadata["requestId"] != "forged"


def test_the_backend_helper_rebuilds_the_context_from_what_arrived(
    client: httpx.Client, clean_backend: Backend, rich_token: str, user_info: dict[str, Any]
) -> None:
    client.post("/chatkit", json={"type": "threads.list", "params": {}})
    sent = recorded(clean_backend, "threads.list")
    context = context_from(dict(sent["headers"]), sent["body"].encode(), secret=SECRET)
    assert context["userId"] == "u-42" and context["userInfo"] == user_info
    assert context["accessToken"] == rich_token


def test_the_signed_identity_covers_the_page_context_the_backend_received(
    client: httpx.Client, clean_backend: Backend
) -> None:
    header = {"X-ChatKit-Page-Context": json.dumps({"title": "Order 42", "path": "/orders/42"})}
    client.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=header)
    sent = recorded(clean_backend, "threads.list")
    signed = verify_identity(dict(sent["headers"])["x-chatkit-identity"], SECRET, body=sent["body"].encode())
    assert (
        signed["pageContext"] == sent["json"]["metadata"]["pageContext"] == {"title": "Order 42", "path": "/orders/42"}
    )


def replayed(sent: dict[str, Any], **changes: Any) -> bytes:
    """The body a captured request would carry with `changes`: its signed metadata kept as it was."""
    return json.dumps({**sent["json"], **changes}).encode()  # not the gateway's compact separators


# A header captured from a `threads.list` (a proxy log, a compromised tool), sent straight to a
# backend that others can reach, within its 60 s, with the user's metadata copied verbatim.
REPLAYS = [
    pytest.param({"type": "threads.delete", "params": {"thread_id": "thr_victim"}}, id="another-op"),
    pytest.param({"params": {"limit": 1, "order": "asc"}}, id="other-params"),
    pytest.param({}, id="same-json-re-encoded"),
]


@pytest.mark.parametrize("changes", REPLAYS)
def test_a_captured_identity_header_cannot_vouch_for_another_body(
    client: httpx.Client, clean_backend: Backend, changes: dict[str, Any]
) -> None:
    client.post("/chatkit", json={"type": "threads.list", "params": {}})
    sent = recorded(clean_backend, "threads.list")
    headers = dict(sent["headers"])
    assert context_from(headers, sent["body"].encode(), secret=SECRET)["userId"] == "u-42"
    body = replayed(sent, **changes)
    assert body != sent["body"].encode()
    with pytest.raises(InvalidIdentity, match="another body"):
        verify_identity(headers["x-chatkit-identity"], SECRET, body=body)
    with pytest.raises(InvalidIdentity, match="another body"):
        context_from(headers, body, secret=SECRET)


PAGE = {"url": "https://app.example.com/orders/42?tab=items#x", "title": "Order 42", "path": "/orders/42"}


def page_header(value: dict[str, Any], encoding: str) -> str:
    text = json.dumps(value)
    return text if encoding == "json" else base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("encoding", ["json", "base64url"])
def test_page_context_from_the_header(client: httpx.Client, clean_backend: Backend, encoding: str) -> None:
    header = page_header({**PAGE, "secret": "dropped", "headings": ["Order 42", "Items"]}, encoding)
    client.post("/chatkit", json={"type": "threads.list", "params": {}}, headers={"X-ChatKit-Page-Context": header})
    page = recorded(clean_backend, "threads.list")["json"]["metadata"]["pageContext"]
    # The URL loses its query and fragment, as the Referer fallback's does (docs/security.md).
    assert page == {**PAGE, "url": "https://app.example.com/orders/42", "headings": "Order 42, Items"}


def test_page_context_from_the_body_when_no_header(client: httpx.Client, clean_backend: Backend) -> None:
    client.post(
        "/chatkit", json={"type": "threads.list", "params": {}, "metadata": {"pageContext": {"title": "T", "n": 1}}}
    )
    assert recorded(clean_backend, "threads.list")["json"]["metadata"]["pageContext"] == {"title": "T"}


def test_the_header_wins_over_the_body(client: httpx.Client, clean_backend: Backend) -> None:
    client.post(
        "/chatkit",
        json={"type": "threads.list", "params": {}, "metadata": {"pageContext": {"title": "body"}}},
        headers={"X-ChatKit-Page-Context": json.dumps({"title": "header"})},
    )
    assert recorded(clean_backend, "threads.list")["json"]["metadata"]["pageContext"] == {"title": "header"}


def test_page_context_falls_back_to_the_referer_without_query_or_fragment(
    client: httpx.Client, clean_backend: Backend
) -> None:
    client.post(
        "/chatkit",
        json={"type": "threads.list", "params": {}},
        headers={"Referer": "https://app.example.com/orders/7?token=secret#frag"},
    )
    page = recorded(clean_backend, "threads.list")["json"]["metadata"]["pageContext"]
    assert page == {"url": "https://app.example.com/orders/7", "path": "/orders/7"}


BAD_PAGE_CONTEXTS = [
    pytest.param("{not json", id="invalid-json"),
    pytest.param("[1, 2]", id="not-an-object"),
    pytest.param(json.dumps({"title": 7, "headings": {"a": 1}}), id="wrong-types"),
    pytest.param(
        json.dumps({"title": "x" * 10_000, "description": "y" * 10_000, "headings": "z" * 10_000}), id="oversized"
    ),
    pytest.param(json.dumps({"url": "https://evil.example/phish"}), id="foreign-origin"),
    pytest.param(json.dumps({"url": "javascript:alert(1)"}), id="javascript-url"),
]


@pytest.mark.parametrize("header", BAD_PAGE_CONTEXTS)
def test_bad_page_context_is_dropped_never_an_error(client: httpx.Client, clean_backend: Backend, header: str) -> None:
    response = client.post(
        "/chatkit", json={"type": "threads.list", "params": {}}, headers={"X-ChatKit-Page-Context": header}
    )
    assert response.status_code == 200
    metadata = recorded(clean_backend, "threads.list")["json"]["metadata"]
    assert "pageContext" not in metadata or "evil" not in json.dumps(metadata["pageContext"])


def test_a_long_page_context_value_is_cut_to_its_cap(client: httpx.Client, clean_backend: Backend) -> None:
    client.post(
        "/chatkit",
        json={"type": "threads.list", "params": {}},
        headers={"X-ChatKit-Page-Context": json.dumps({"title": "t" * 2000})},
    )
    assert recorded(clean_backend, "threads.list")["json"]["metadata"]["pageContext"] == {"title": "t" * 1024}


def test_whoami_reply_shows_what_the_assistant_was_given(client: httpx.Client, clean_backend: Backend) -> None:
    response = post(client, "threads.create", {"input": user_input("/whoami")})
    assert response.status_code == 200
    assert '"userId":"u-42"' in response.text.replace("\\", "")
