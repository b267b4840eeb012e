"""The documented nginx snippets, exactly as shipped in `deploy/nginx/`, in front of a real gateway.

`gateway.conf` (nginx as the reverse proxy before the gateway) must not hold back a stream nor
keep the backend working after the client left. `forward-auth.conf` (nginx `auth_request` against
`/auth/verify`) must let a valid credential through to the protected app with the identity
headers set by the gateway's answer, replacing the client's own, and stop everything else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.chatkit import (
    assert_streams_while_backend_produces,
    open_stream_then_drop,
    saw_cancellation,
)
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, user_claims, user_token
from tests.support.idp import LoopbackIdP
from tests.support.nginx import EchoApp, RunningNginx, echo_app, start_nginx

IDENTITY_HEADERS = ("X-User-Id", "X-User-Email", "X-Auth-Request-User", "X-Auth-Request-Email")


def host_of(url: str) -> str:
    return url.removeprefix("http://")


# -- deploy/nginx/gateway.conf: nginx in front of the gateway ------------------------------------


@pytest.fixture(scope="module")
def proxy(gateway: RunningGateway) -> Iterator[RunningNginx]:
    with start_nginx("gateway.conf", GATEWAY=host_of(gateway.url)) as running:
        yield running


@pytest.fixture
def proxied(proxy: RunningNginx, clean_backend: Backend, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, headers=bearer(token), trust_env=False, timeout=30) as client:
        yield client


def test_stream_reaches_the_client_through_nginx_while_the_backend_is_still_producing(
    proxied: httpx.Client, clean_backend: Backend
) -> None:
    # httpx asks for gzip: the snippet must not compress (nor buffer) the stream.
    headers = assert_streams_while_backend_produces(proxied, clean_backend)
    assert "content-encoding" not in headers
    assert "content-length" not in headers


def test_client_disconnect_through_nginx_cancels_the_backend_stream(
    proxy: RunningNginx, clean_backend: Backend, token: str
) -> None:
    thread_id = open_stream_then_drop("127.0.0.1", proxy.port, token, host_header="chat.example")
    if not saw_cancellation(clean_backend, thread_id):
        pytest.fail(f"the backend never saw the stream cancelled\nnginx: {proxy.error_log()[-2000:]}")
    items = clean_backend.thread(thread_id)["items"]
    partial = [i for i in items if i["type"] == "assistant_message"]
    assert partial and partial[0]["content"][0]["text"].startswith("slow reply")


def test_cookie_requests_from_the_page_served_by_nginx_pass_the_origin_check(
    proxy: RunningNginx, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    # The snippet passes the browser's Host through, so the gateway's same-origin default holds.
    cookie = {"cookie": f"auth_token={user_token(session_idp, 'carol')}"}
    body = {"type": "threads.list", "params": {"limit": 5}}
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=30) as client:
        same = client.post("/chatkit", json=body, headers={**cookie, "origin": proxy.url})
        other = client.post("/chatkit", json=body, headers={**cookie, "origin": "https://evil.example"})

    assert same.status_code == 200, same.text
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "origin_not_allowed"
    assert len(clean_backend.requests()) == 1


# -- deploy/nginx/forward-auth.conf: auth_request against /auth/verify ---------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[EchoApp]:
    with echo_app() as running:
        yield running


@pytest.fixture(scope="module")
def guard(gateway: RunningGateway, app: EchoApp) -> Iterator[RunningNginx]:
    with start_nginx("forward-auth.conf", GATEWAY=host_of(gateway.url), APP=host_of(app.url)) as running:
        yield running


@pytest.fixture
def visitor(guard: RunningNginx, app: EchoApp) -> Iterator[httpx.Client]:
    app.requests.clear()
    with httpx.Client(base_url=guard.url, trust_env=False, timeout=30) as client:
        yield client


def page_headers(guard: RunningNginx, token: str) -> dict[str, str]:
    """What a page on nginx's own origin sends with its cookie."""
    return {"cookie": f"auth_token={token}", "origin": guard.url}


FORGED = {name: "mallory" for name in IDENTITY_HEADERS}


def test_a_valid_cookie_gets_through_with_the_gateways_identity_headers_replacing_the_clients(
    visitor: httpx.Client, guard: RunningNginx, app: EchoApp, session_idp: LoopbackIdP
) -> None:
    token = user_token(session_idp, "alice", email="alice@example.com")
    response = visitor.get("/reports?year=2026", headers={**page_headers(guard, token), **FORGED})

    assert response.status_code == 200, response.text
    (seen,) = app.requests
    assert seen["path"] == "/reports?year=2026"
    expected = {"X-User-Id": "alice", "X-Auth-Request-User": "alice"}
    expected |= {"X-User-Email": "alice@example.com", "X-Auth-Request-Email": "alice@example.com"}
    for name, value in expected.items():
        assert app.header_values(seen, name) == [value], name


def test_claims_the_token_lacks_are_not_sent_and_the_clients_copies_never_pass(
    visitor: httpx.Client, guard: RunningNginx, app: EchoApp, session_idp: LoopbackIdP
) -> None:
    response = visitor.get("/", headers={**page_headers(guard, user_token(session_idp, "bob")), **FORGED})

    assert response.status_code == 200, response.text
    (seen,) = app.requests
    assert app.header_values(seen, "X-User-Id") == ["bob"]
    assert app.header_values(seen, "X-Auth-Request-User") == ["bob"]
    assert app.header_values(seen, "X-User-Email") == []
    assert app.header_values(seen, "X-Auth-Request-Email") == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_requests_with_bodies_and_other_methods_are_checked_and_passed_whole(
    visitor: httpx.Client, app: EchoApp, session_idp: LoopbackIdP, method: str
) -> None:
    headers = bearer(user_token(session_idp, "dave"))
    response = visitor.request(method, "/items/7", headers=headers, content=b'{"qty": 3}')

    assert response.status_code == 200, response.text
    (seen,) = app.requests
    assert (seen["method"], seen["body"]) == (method, '{"qty": 3}')
    assert app.header_values(seen, "X-User-Id") == ["dave"]


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param("not-a-jwt", id="garbage"),
        pytest.param("tampered", id="bad-signature"),
        pytest.param("expired", id="expired"),
    ],
)
def test_an_invalid_cookie_is_stopped_with_401(
    visitor: httpx.Client, guard: RunningNginx, app: EchoApp, session_idp: LoopbackIdP, credential: str
) -> None:
    if credential == "tampered":
        header, payload, signature = user_token(session_idp, "alice").split(".")
        forged = user_token(session_idp, "root").split(".")[1]
        credential = f"{header}.{forged}.{signature}"
        assert payload != forged
    elif credential == "expired":
        now = int(time.time())
        credential = session_idp.sign(user_claims(session_idp, iat=now - 7200, exp=now - 3600))
    response = visitor.get("/", headers={**page_headers(guard, credential), **FORGED})

    assert response.status_code == 401
    assert app.requests == []


def test_no_credentials_are_stopped_with_401(visitor: httpx.Client, guard: RunningNginx, app: EchoApp) -> None:
    response = visitor.get("/", headers={"origin": guard.url, **FORGED})

    assert response.status_code == 401
    assert app.requests == []


def test_a_valid_cookie_from_a_foreign_page_is_stopped_with_403(
    visitor: httpx.Client, app: EchoApp, session_idp: LoopbackIdP
) -> None:
    headers = {"cookie": f"auth_token={user_token(session_idp)}", "origin": "https://evil.example"}
    response = visitor.post("/transfer", headers=headers, content=b"{}")

    assert response.status_code == 403
    assert app.requests == []


def test_the_verify_location_is_internal_only(visitor: httpx.Client, app: EchoApp, session_idp: LoopbackIdP) -> None:
    response = visitor.get("/_chatkit_gateway_verify", headers=bearer(user_token(session_idp)))

    assert response.status_code == 404
    assert app.requests == []
