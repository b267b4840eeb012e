"""Which headers cross the gateway: hop-by-hop never, client cookies and Authorization never."""

from __future__ import annotations

import httpx
import pytest

from gateway.headers import connection_listed, relay_response_headers
from gateway.outbound import request_id_from
from tests.support.fixtures import Backend
from tests.support.gateway import bearer, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP


def sent_headers(backend: Backend) -> dict[str, str]:
    (request,) = backend.requests()
    names = [name for name, _ in request["headers"]]
    assert len(names) == len(set(names)), f"duplicated headers upstream: {names}"
    return dict(request["headers"])


def test_hop_by_hop_and_connection_listed_headers_do_not_cross(gw_client: httpx.Client, clean_backend: Backend) -> None:
    gw_client.post(
        "/chatkit",
        json={"type": "threads.list", "params": {}},
        headers={
            "Connection": "keep-alive, X-Secret-Hop, Accept-Language",
            "X-Secret-Hop": "1",
            "Accept-Language": "fr",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-Foo",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Connection": "keep-alive",
        },
    )
    sent = sent_headers(clean_backend)
    for name in ("x-secret-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"):
        assert name not in sent
    assert "accept-language" not in sent  # named in Connection, so hop-by-hop for this message


def test_cookies_and_authorization_are_not_forwarded(
    gw_client: httpx.Client, clean_backend: Backend, token: str
) -> None:
    response = gw_client.post(
        "/chatkit",
        json={"type": "threads.list", "params": {}},
        headers={"Cookie": "session=secret-cookie; other=1"},
    )
    assert response.status_code == 200
    sent = sent_headers(clean_backend)
    assert "cookie" not in sent and "authorization" not in sent
    assert "secret-cookie" not in repr(sent) and token not in repr(sent)


def test_the_chatkit_headers_the_client_sends_are_forwarded(gw_client: httpx.Client, clean_backend: Backend) -> None:
    forwarded = {
        "accept-language": "de-DE",
        "user-agent": "test-agent/1",
        "chatkit-frame-instance-id": "frame-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=1",
        "accept": "text/event-stream",
    }
    gw_client.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=forwarded)
    sent = sent_headers(clean_backend)
    for name, value in forwarded.items():
        assert sent[name] == value
    assert sent["accept-encoding"] == "identity"
    assert sent["content-type"] == "application/json"


def test_client_identity_headers_are_not_forwarded(gw_client: httpx.Client, clean_backend: Backend) -> None:
    gw_client.post(
        "/chatkit",
        json={"type": "threads.list", "params": {}},
        headers={"X-User-Id": "admin", "X-User-Email": "a@b", "X-ChatKit-Identity": "forged", "X-Forwarded-User": "x"},
    )
    sent = sent_headers(clean_backend)  # asserts every header arrives once
    assert sent["x-user-id"] == "user-1"  # the token's subject, not the client's claim
    assert not {"x-user-email", "x-chatkit-identity", "x-forwarded-user"} & set(sent)


RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"connection", b"keep-alive, x-hop"),
    (b"x-hop", b"1"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"set-cookie", b"upstream=1"),
    (b"server", b"uvicorn"),
    (b"date", b"Fri, 27 Nov 2026 00:00:00 GMT"),
    (b"x-backend", b"kept"),
    (b"content-length", b"12"),
]


def test_response_headers_lose_hop_by_hop_set_cookie_server_and_date() -> None:
    relayed = relay_response_headers(RESPONSE_HEADERS, sse=False)
    assert relayed == [(b"content-type", b"application/json"), (b"x-backend", b"kept"), (b"content-length", b"12")]


def test_sse_response_headers_get_no_cache_and_no_buffering_and_no_length() -> None:
    upstream = [(b"content-type", b"text/event-stream"), (b"cache-control", b"max-age=60"), (b"content-length", b"5")]
    relayed = relay_response_headers(upstream, sse=True)
    assert relayed == [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
    ]


def test_connection_listed_names_are_split_trimmed_and_lowercased() -> None:
    assert connection_listed([(b"connection", b" Keep-Alive ,X-A,, x-b ")]) == {b"keep-alive", b"x-a", b"x-b"}


@pytest.mark.parametrize(
    ("value", "kept"),
    [(b"abc-123", True), (b"a" * 128, True), (b"a" * 129, False), (b"", False), (b"a b", False), (b"a/b", False)],
)
def test_request_id_is_kept_only_when_well_formed(value: bytes, kept: bool) -> None:
    assert (request_id_from([(b"x-request-id", value)]) == value.decode()) is kept


def test_a_backend_cookie_for_one_user_never_reaches_another(backend: Backend, session_idp: LoopbackIdP) -> None:
    config = gateway_config(backend.url, session_idp, {"upstream": {"url": f"{backend.url}/cookie/chatkit"}})
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, trust_env=False) as client:
        backend.reset()
        body = {"type": "threads.list", "params": {}}
        first = client.post("/chatkit", json=body, headers=bearer(user_token(session_idp, sub="alice")))
        second = client.post("/chatkit", json=body, headers=bearer(user_token(session_idp, sub="bob")))
    assert first.status_code == second.status_code == 200
    assert "set-cookie" not in first.headers and "backend_session" not in str(client.cookies)
    for request in backend.requests():
        assert "cookie" not in dict(request["headers"]), "a cookie the backend set was sent back to it"
