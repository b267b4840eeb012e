"""Cross-site protection (SPEC 4, security-anchors.md §4.9-4.10): the Origin check for cookie
credentials, and CORS for browsers on another origin.

A cookie-authenticated request must come from an allowed origin (its `Origin`, else the origin of
its `Referer`); a refused one gets 403 `origin_not_allowed` and never reaches the backend. Bearer
requests are exempt. CORS preflights are answered without credentials and only ever allow the
listed origins, never `*`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.chatkit import post, user_input
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway
from tests.support.idp import LoopbackIdP

APP = "https://app.example.com"
EVIL = "https://evil.example"
BODY = json.dumps({"type": "threads.list", "params": {}}).encode()
REQUESTED_HEADERS = [
    "content-type",
    "authorization",
    "chatkit-frame-instance-id",
    "x-chatkit-page-context",
    "x-request-id",
]


@pytest.fixture(scope="module")
def csrf_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    config = gateway_config(backend.url, session_idp, {"security": {"allowed_origins": [APP]}})
    with start_gateway(config) as running:
        yield running


@pytest.fixture(scope="module")
def cors_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    config = gateway_config(backend.url, session_idp, {"cors": {"allow_origins": [APP]}})
    with start_gateway(config) as running:
        yield running


def send_to(gateway: RunningGateway, headers: dict[str, str], body: bytes = BODY) -> httpx.Response:
    """The ChatKit POST on a connection of its own (no cookie jar carried between cases)."""
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=30) as client:
        return post(client, body=body, headers=headers)


def cookie(token: str) -> dict[str, str]:
    return {"cookie": f"auth_token={token}"}


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"]["code"] == "origin_not_allowed"


def assert_never_wildcard(response: httpx.Response) -> None:
    assert response.headers.get("access-control-allow-origin") != "*"
    assert response.headers.get("access-control-allow-origin") in (None, APP)


# -- CSRF: cookie credentials need an allowed Origin (or Referer) ------------------------------

CSRF: list[Any] = [
    pytest.param({"origin": APP}, 200, id="allowed-origin"),
    pytest.param({"referer": f"{APP}/chat?thread=1#top"}, 200, id="referer-of-allowed-origin-without-origin"),
    pytest.param({"origin": APP, "referer": f"{EVIL}/page"}, 200, id="origin-decides-over-referer"),
    pytest.param({"origin": EVIL}, 403, id="foreign-origin"),
    pytest.param({"origin": "null"}, 403, id="origin-null"),
    pytest.param({"origin": "null", "referer": f"{APP}/chat"}, 403, id="origin-null-with-allowed-referer"),
    pytest.param({}, 403, id="no-origin-no-referer"),
    pytest.param({"referer": f"{EVIL}/page"}, 403, id="referer-of-foreign-origin"),
    pytest.param({"origin": EVIL, "referer": f"{APP}/chat"}, 403, id="foreign-origin-with-allowed-referer"),
    pytest.param({"origin": "https://app.example.com.evil.example"}, 403, id="suffix-trick"),
    pytest.param({"origin": "https://evil-app.example.com"}, 403, id="prefix-trick"),
    pytest.param({"origin": "https://sub.app.example.com"}, 403, id="subdomain"),
    pytest.param({"origin": "http://app.example.com"}, 403, id="scheme-differs"),
    pytest.param({"origin": "https://app.example.com:8443"}, 403, id="port-differs"),
    pytest.param({"referer": "https://app.example.com.evil.example/chat"}, 403, id="referer-suffix-trick"),
    pytest.param({"referer": "javascript:alert(1)"}, 403, id="referer-not-http"),
    pytest.param({"origin": "app.example.com"}, 403, id="origin-without-scheme"),
    # An Origin is exactly scheme://host[:port]; anything more is not a browser's, whatever host it names.
    pytest.param({"origin": "https://evil.example@app.example.com"}, 403, id="origin-with-userinfo"),
    pytest.param({"origin": f"{APP}/"}, 403, id="origin-with-path"),
    pytest.param({"origin": f"{APP}/chat"}, 403, id="origin-with-long-path"),
    pytest.param({"origin": f"{APP}?x=1"}, 403, id="origin-with-query"),
    pytest.param({"origin": f"{APP}#top"}, 403, id="origin-with-fragment"),
    pytest.param(
        {"origin": "https://evil.example@app.example.com", "referer": f"{APP}/chat"},
        403,
        id="userinfo-origin-with-allowed-referer",
    ),
    pytest.param({"referer": "https://evil.example@app.example.com/chat"}, 403, id="referer-with-userinfo"),
]


@pytest.mark.parametrize(("headers", "status"), CSRF)
def test_cookie_request_is_let_through_only_from_an_allowed_origin(
    csrf_gateway: RunningGateway, clean_backend: Backend, token: str, headers: dict[str, str], status: int
) -> None:
    response = send_to(csrf_gateway, {**cookie(token), **headers})
    if status == 200:
        assert response.status_code == 200, response.text
        assert len(clean_backend.requests()) == 1
    else:
        assert_forbidden(response)
        assert clean_backend.requests() == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-origin"),
        pytest.param({"origin": EVIL}, id="foreign-origin"),
        pytest.param({"origin": "null"}, id="origin-null"),
        pytest.param({"referer": f"{EVIL}/page"}, id="foreign-referer"),
    ],
)
def test_bearer_request_is_exempt_from_the_origin_check(
    csrf_gateway: RunningGateway, clean_backend: Backend, token: str, headers: dict[str, str]
) -> None:
    response = send_to(csrf_gateway, {**bearer(token), **headers})
    assert response.status_code == 200, response.text
    assert len(clean_backend.requests()) == 1
    assert "access-control-allow-origin" not in response.headers  # no CORS configured here


def test_cookie_request_with_a_simple_request_content_type_is_refused(
    csrf_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    # text/plain needs no preflight, so a cross-site form could send it; it never reaches the backend.
    response = send_to(csrf_gateway, {**cookie(token), "origin": APP, "content-type": "text/plain"})
    assert response.status_code == 415, response.text
    assert clean_backend.requests() == []


def test_origin_is_checked_only_after_the_cookie_is_verified(
    csrf_gateway: RunningGateway, clean_backend: Backend
) -> None:
    # A forged cookie from a foreign origin learns nothing about the origin rule: 401, not 403.
    response = send_to(csrf_gateway, {**cookie("forged.token.value"), "origin": EVIL})
    assert response.status_code == 401, response.text
    assert clean_backend.requests() == []


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        pytest.param("{self}", 200, id="own-origin"),
        pytest.param("http://127.0.0.1:{other}", 403, id="same-host-other-port"),
        pytest.param("http://localhost:{port}", 403, id="other-host-same-port"),
        pytest.param(APP, 403, id="unlisted-origin"),
        pytest.param("http://evil.example@127.0.0.1:{port}", 403, id="own-origin-behind-userinfo"),
        pytest.param("{self}/", 403, id="own-origin-with-path"),
    ],
)
def test_without_allowed_origins_only_the_gateways_own_origin_may_use_cookies(
    gateway: RunningGateway, clean_backend: Backend, token: str, origin: str, status: int
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    origin = origin.format(self=gateway.url, port=port, other=port + 1 if port < 65535 else port - 1)
    response = send_to(gateway, {**cookie(token), "origin": origin})
    if status == 200:
        assert response.status_code == 200, response.text
        assert len(clean_backend.requests()) == 1
    else:
        assert_forbidden(response)
        assert clean_backend.requests() == []


# -- CORS --------------------------------------------------------------------------------------


def preflight(gateway: RunningGateway, origin: str, path: str = "/chatkit", **extra: str) -> httpx.Response:
    headers = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": ",".join(REQUESTED_HEADERS),
        **extra,
    }
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=30) as client:
        return client.options(path, headers=headers)


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


@pytest.mark.parametrize("path", ["/chatkit", "/chatkit/uploads/attachment-1"])
def test_preflight_from_the_allowed_origin_is_answered_without_credentials(
    cors_gateway: RunningGateway, clean_backend: Backend, path: str
) -> None:
    response = preflight(cors_gateway, APP, path)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert set(REQUESTED_HEADERS) <= listed(response.headers["access-control-allow-headers"])
    assert "POST" in {m.upper() for m in listed(response.headers["access-control-allow-methods"])}
    assert "origin" in listed(response.headers["vary"])
    assert clean_backend.requests() == []


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(EVIL, id="foreign-origin"),
        pytest.param("null", id="origin-null"),
        pytest.param("https://app.example.com.evil.example", id="suffix-trick"),
        pytest.param("https://evil-app.example.com", id="prefix-trick"),
        pytest.param("http://app.example.com", id="scheme-differs"),
    ],
)
def test_preflight_from_an_unlisted_origin_gets_no_allow_origin(
    cors_gateway: RunningGateway, clean_backend: Backend, origin: str
) -> None:
    response = preflight(cors_gateway, origin)
    # Starlette's CORSMiddleware answers a refused preflight with a plain-text 400.
    assert response.status_code == 400, response.text
    assert response.text == "Disallowed CORS origin"
    assert "access-control-allow-origin" not in response.headers
    assert clean_backend.requests() == []


def test_preflight_asking_for_an_unlisted_header_fails(cors_gateway: RunningGateway, clean_backend: Backend) -> None:
    response = preflight(cors_gateway, APP, **{"access-control-request-headers": "content-type,x-evil"})
    # A non-2xx preflight fails in the browser whatever else it carries.
    assert response.status_code == 400, response.text
    assert "x-evil" not in listed(response.headers.get("access-control-allow-headers", ""))
    assert clean_backend.requests() == []


def test_cross_origin_post_from_the_allowed_origin_is_readable(
    cors_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    response = send_to(cors_gateway, {**bearer(token), "origin": APP, "x-request-id": "cors-req-1"})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "x-request-id" in listed(response.headers["access-control-expose-headers"])
    assert "origin" in listed(response.headers["vary"])
    assert response.headers["x-request-id"] == "cors-req-1"
    assert len(clean_backend.requests()) == 1


def test_a_cross_origin_stream_from_the_allowed_origin_is_readable(
    cors_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    """A stream's head carries the CORS answer too (the request's headers are let go only after it)."""
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("hello there")}}).encode()
    response = send_to(cors_gateway, {**bearer(token), "origin": APP}, body=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert b"thread.created" in response.content


def test_cross_origin_post_from_a_foreign_origin_gets_no_allow_origin(
    cors_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    response = send_to(cors_gateway, {**bearer(token), "origin": EVIL})
    assert response.status_code == 200, response.text  # bearer: the browser just cannot read it
    assert "access-control-allow-origin" not in response.headers
    assert len(clean_backend.requests()) == 1


def test_an_auth_error_to_the_allowed_origin_is_readable_by_the_page(
    cors_gateway: RunningGateway, clean_backend: Backend
) -> None:
    response = send_to(cors_gateway, {"authorization": "Bearer not.a.token", "origin": APP})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == APP
    assert response.json()["error"]["code"] == "invalid_token"
    assert clean_backend.requests() == []


@pytest.mark.parametrize(
    ("origin", "status"),
    [pytest.param(APP, 200, id="cors-allowed-origin"), pytest.param(EVIL, 403, id="foreign-origin")],
)
def test_cookie_request_from_a_cors_allowed_origin_passes_the_origin_check(
    cors_gateway: RunningGateway, clean_backend: Backend, token: str, origin: str, status: int
) -> None:
    response = send_to(cors_gateway, {**cookie(token), "origin": origin})
    assert response.status_code == status, response.text
    assert len(clean_backend.requests()) == (1 if status == 200 else 0)
    assert_never_wildcard(response)


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(APP, id="allowed"),
        pytest.param(EVIL, id="foreign"),
        pytest.param("null", id="null"),
        pytest.param(f"{EVIL}@app.example.com", id="allowed-host-behind-userinfo"),
        pytest.param(f"{APP}/", id="allowed-with-a-path"),
    ],
)
def test_allow_origin_is_never_a_wildcard_or_a_reflection(
    cors_gateway: RunningGateway, clean_backend: Backend, token: str, origin: str
) -> None:
    answers = [
        preflight(cors_gateway, origin),
        send_to(cors_gateway, {**bearer(token), "origin": origin}),
        send_to(cors_gateway, {**cookie(token), "origin": origin}),
        send_to(cors_gateway, {"origin": origin}),
    ]
    for response in answers:
        assert_never_wildcard(response)
        if origin != APP:
            assert "access-control-allow-origin" not in response.headers
