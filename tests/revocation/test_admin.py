"""The admin API and the revocation list in one gateway (memory store): who may call it, what a
revocation refuses (the verified-token cache notwithstanding), and the open streams it ends."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.chatkit import LiveStream, saw_cancellation, user_input
from tests.support.checks import assert_error, metric
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.rawhttp import address_of, read_response, request_bytes
from tests.support.revocation import ADMIN_TOKEN, admin, ask, revocation_config, write_admin_token


@pytest.fixture(scope="module")
def revoking(
    backend: Backend, session_idp: LoopbackIdP, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    token_file = write_admin_token(tmp_path_factory.mktemp("admin"))
    with start_gateway(revocation_config(backend.url, session_idp, token_file)) as running:
        yield running


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def test_admin_routes_answer_404_with_revocation_off(gateway: RunningGateway) -> None:
    assert_error(admin(gateway.url, {"jti": "x"}), 404, "not_found")
    assert_error(admin(gateway.url, {"jti": "x"}, method="DELETE"), 404, "not_found")


def test_admin_routes_answer_404_without_an_admin_token_file(backend: Backend, session_idp: LoopbackIdP) -> None:
    with start_gateway(revocation_config(backend.url, session_idp, None)) as running:
        assert_error(admin(running.url, {"jti": "x"}), 404, "not_found")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer wrong-token-of-some-length", id="wrong"),
        pytest.param(f"Basic {ADMIN_TOKEN}", id="other-scheme"),
        pytest.param(f"Bearer {ADMIN_TOKEN[:-1]}", id="prefix"),
        pytest.param(f"Bearer {ADMIN_TOKEN}x", id="longer"),
    ],
)
def test_a_wrong_admin_token_gets_401_and_changes_nothing(
    revoking: RunningGateway, session_idp: LoopbackIdP, authorization: str | None
) -> None:
    sub = user()
    token = user_token(session_idp, sub)
    headers = {"authorization": authorization} if authorization else {}
    url = f"{revoking.url}/admin/revocations"
    response = httpx.post(url, json={"iss": session_idp.issuer, "sub": sub}, headers=headers, trust_env=False)
    assert_error(response, 401, "unauthorized")
    assert ask(revoking.url, token).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="malformed"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"{}", id="empty"),
        pytest.param(b'{"sub": "alice"}', id="sub-without-iss"),
        pytest.param(b'{"sid": "s1"}', id="sid-without-iss"),
        pytest.param(b'{"iss": "https://idp.example.com"}', id="iss-alone"),
        pytest.param(b'{"jti": ""}', id="empty-jti"),
        pytest.param(b'{"jti": 5}', id="number-jti"),
        pytest.param(b'{"jti": "a", "ttl_seconds": 0}', id="zero-ttl"),
        pytest.param(b'{"jti": "a", "ttl_seconds": -5}', id="negative-ttl"),
        pytest.param(b'{"jti": "a", "ttl_seconds": true}', id="bool-ttl"),
        pytest.param(b'{"jti": "a", "ttl_seconds": "60"}', id="string-ttl"),
        pytest.param(b'{"jti": "a", "ttl_seconds": 1e300}', id="huge-ttl"),
        pytest.param(b'{"jti": "a", "extra": 1}', id="unknown-member"),
    ],
)
def test_a_malformed_revocation_gets_400(revoking: RunningGateway, body: bytes) -> None:
    assert_error(admin(revoking.url, body), 400, "invalid_revocation")


@pytest.mark.parametrize("path", ["/chatkit", "/auth/verify"])
def test_a_revoked_user_gets_401_even_with_a_cached_token_and_others_do_not(
    revoking: RunningGateway, session_idp: LoopbackIdP, path: str
) -> None:
    sub, other = user(), user()
    token, later, bystander = user_token(session_idp, sub), user_token(session_idp, sub), user_token(session_idp, other)
    assert ask(revoking.url, token, path).status_code == 200  # now in the verified-token cache
    assert admin(revoking.url, {"iss": session_idp.issuer, "sub": sub}).status_code == 204
    refused = ask(revoking.url, token, path)
    assert_error(refused, 401, "token_revoked")
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert_error(ask(revoking.url, later, path), 401, "token_revoked")  # whenever issued
    assert ask(revoking.url, bystander, path).status_code == 200


def test_delete_lifts_a_revocation_and_answers_204_for_an_absent_one(
    revoking: RunningGateway, session_idp: LoopbackIdP
) -> None:
    sub = user()
    token = user_token(session_idp, sub)
    entry = {"iss": session_idp.issuer, "sub": sub}
    assert admin(revoking.url, entry).status_code == 204
    assert ask(revoking.url, token).status_code == 401
    assert admin(revoking.url, entry, method="DELETE").status_code == 204
    assert ask(revoking.url, token).status_code == 200
    assert admin(revoking.url, entry, method="DELETE").status_code == 204
    assert admin(revoking.url, {"jti": "never-revoked"}, method="DELETE").status_code == 204


def test_a_jti_or_sid_revocation_refuses_only_those_tokens(revoking: RunningGateway, session_idp: LoopbackIdP) -> None:
    sub = user()
    one = user_token(session_idp, sub, jti="jti-one", sid="session-a")
    two = user_token(session_idp, sub, jti="jti-two", sid="session-a")
    three = user_token(session_idp, sub, jti="jti-three", sid="session-b")
    assert admin(revoking.url, {"jti": "jti-one"}).status_code == 204
    assert [ask(revoking.url, t).status_code for t in (one, two, three)] == [401, 200, 200]
    assert admin(revoking.url, {"iss": session_idp.issuer, "sid": "session-a"}).status_code == 204
    assert [ask(revoking.url, t).status_code for t in (one, two, three)] == [401, 401, 200]
    # One body naming several entries lifts, or revokes, each.
    both = {"jti": "jti-one", "iss": session_idp.issuer, "sid": "session-a"}
    assert admin(revoking.url, both, method="DELETE").status_code == 204
    assert [ask(revoking.url, t).status_code for t in (one, two, three)] == [200, 200, 200]
    assert admin(revoking.url, {"jti": "jti-three", "iss": session_idp.issuer, "sid": "session-a"}).status_code == 204
    assert [ask(revoking.url, t).status_code for t in (one, two, three)] == [401, 401, 401]


def test_a_revocation_lapses_after_its_ttl(revoking: RunningGateway, session_idp: LoopbackIdP) -> None:
    sub = user()
    token = user_token(session_idp, sub)
    assert admin(revoking.url, {"iss": session_idp.issuer, "sub": sub, "ttl_seconds": 1}).status_code == 204
    assert ask(revoking.url, token).status_code == 401
    time.sleep(1.2)
    assert ask(revoking.url, token).status_code == 200


def test_a_revocation_ends_the_users_open_streams_and_spares_others(
    revoking: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    sub = user()
    mine = LiveStream(revoking.url, user_token(session_idp, sub))
    theirs = LiveStream(revoking.url, user_token(session_idp, user()))
    try:
        mine.wait_for_events(3)
        theirs.wait_for_events(3)
        revoked_at = time.monotonic()
        assert admin(revoking.url, {"iss": session_idp.issuer, "sub": sub}).status_code == 204
        assert mine.ended.wait(5)
        assert mine.ended_at is not None and mine.ended_at - revoked_at < 1.0
        last = mine.events[-1]
        assert last["type"] == "error" and last["allow_retry"] is False
        assert saw_cancellation(clean_backend, mine.thread_id)
        seen = len(theirs.events)
        theirs.wait_for_events(seen + 3)
        assert not theirs.ended.is_set()
    finally:
        mine.close()
        theirs.close()
    metrics = httpx.get(f"{revoking.url}/metrics", trust_env=False).text
    assert metric(metrics, "chatkit_gateway_revocations_total", source="admin") >= 1
    assert metric(metrics, "chatkit_gateway_streams_ended_total", op="threads.create", reason="revoked") == 1


def test_a_revocation_made_while_the_body_arrives_refuses_the_stream_before_the_backend_sees_it(
    revoking: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    sub = user()
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("/forever")}}).encode()
    head = [
        (b"host", b"gateway"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {user_token(session_idp, sub)}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    with socket.create_connection(address_of(revoking.url), timeout=10) as sock:
        sock.sendall(request_bytes("POST", b"/chatkit", head))  # verified and checked on the head alone
        time.sleep(0.3)
        assert admin(revoking.url, {"iss": session_idp.issuer, "sub": sub}).status_code == 204
        sock.sendall(body)
        response = read_response(sock)
    assert response.status == 401 and response.error_code == "token_revoked"
    assert not clean_backend.requests()


def test_config_refuses_an_unreadable_or_short_admin_token_file(
    backend: Backend, session_idp: LoopbackIdP, tmp_path: Path
) -> None:
    from gateway.config import ConfigError, build_config
    from gateway.revocation.admin import read_admin_token

    short = tmp_path / "short"
    short.write_text("abc")
    for path, message in ((tmp_path / "missing", "cannot read"), (short, "at least")):
        config = build_config(revocation_config(backend.url, session_idp, str(path)))
        with pytest.raises(ConfigError, match=f"revocation.admin_token_file: .*{message}"):
            read_admin_token(config.revocation)
