"""OIDC Back-Channel Logout 1.0 at `/auth/backchannel-logout`: a logout token signed by the
identity provider's key ends that session (or, with only `sub`, the user's earlier sessions), and
every token the spec says to refuse gets 400 and revokes nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.chatkit import LiveStream, saw_cancellation
from tests.support.checks import assert_error, metric
from tests.support.fixtures import Backend
from tests.support.gateway import AUDIENCE, RunningGateway, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP, SigningKey, b64url
from tests.support.revocation import BACKCHANNEL_LOGOUT_EVENT, ask, logout, logout_claims, revocation_config


@pytest.fixture(scope="module")
def revoking(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    with start_gateway(revocation_config(backend.url, session_idp, None)) as running:
        yield running


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value).encode())


def forged(idp: LoopbackIdP, claims: dict[str, Any]) -> str:
    """Signed by a key of the attacker's own, under the provider's kid."""
    impostor = SigningKey(kid=idp.current_kid, kind="RSA", private=SigningKey.generate("RSA").private)
    signing_input = f"{segment({'alg': 'RS256', 'typ': 'JWT', 'kid': idp.current_kid})}.{segment(claims)}"
    return f"{signing_input}.{b64url(impostor.signature('RS256', signing_input.encode()))}"


def tampered(idp: LoopbackIdP, claims: dict[str, Any]) -> str:
    """A genuine token for another session, its payload swapped for one naming this one."""
    header, _, signature = idp.sign({**claims, "sid": "someone-else"}).split(".")
    return f"{header}.{segment(claims)}.{signature}"


def without(*names: str) -> Callable[[LoopbackIdP, dict[str, Any]], str]:
    return lambda idp, claims: idp.sign({k: v for k, v in claims.items() if k not in names})


def but(**changes: Any) -> Callable[[LoopbackIdP, dict[str, Any]], str]:
    return lambda idp, claims: idp.sign({**claims, **changes})


def signed(**header: Any) -> Callable[[LoopbackIdP, dict[str, Any]], str]:
    return lambda idp, claims: idp.sign(claims, **header)


REFUSED = [
    pytest.param(forged, id="forged-signature"),
    pytest.param(tampered, id="tampered-payload"),
    pytest.param(but(aud=AUDIENCE), id="wrong-audience"),
    pytest.param(without("aud"), id="no-audience"),
    pytest.param(but(nonce="n-123"), id="nonce"),
    pytest.param(without("events"), id="no-events"),
    pytest.param(but(events={BACKCHANNEL_LOGOUT_EVENT: "yes"}), id="event-not-an-object"),
    pytest.param(but(events={"http://schemas.openid.net/event/other": {}}), id="other-event"),
    pytest.param(without("sid", "sub"), id="no-sub-no-sid"),
    pytest.param(but(sid=7), id="sid-not-a-string"),
    pytest.param(without("jti"), id="no-jti"),
    pytest.param(without("iat"), id="no-iat"),
    pytest.param(without("exp"), id="no-exp"),
    pytest.param(lambda idp, c: idp.sign({**c, "iat": c["iat"] - 600, "exp": c["iat"] - 300}), id="expired"),
    pytest.param(but(iat=int(time.time()) + 600), id="issued-in-the-future"),
    pytest.param(but(iss="http://127.0.0.1:9"), id="unknown-issuer"),
    pytest.param(lambda idp, c: idp.sign(c, header_extra={"typ": "at+jwt"}), id="typ-access-token"),
    pytest.param(signed(alg="none"), id="alg-none"),
    pytest.param(signed(alg="HS256"), id="hmac-with-public-key"),
    pytest.param(lambda idp, c: user_token(idp, "victim", sid=c["sid"]), id="an-access-token"),
]


@pytest.mark.parametrize("make", REFUSED)
def test_an_invalid_logout_token_gets_400_and_revokes_nothing(
    revoking: RunningGateway, session_idp: LoopbackIdP, make: Callable[[LoopbackIdP, dict[str, Any]], str]
) -> None:
    sid = uuid.uuid4().hex
    token = user_token(session_idp, "victim", sid=sid)
    assert ask(revoking.url, token).status_code == 200
    assert_error(
        logout(revoking.url, make(session_idp, logout_claims(session_idp, sub="victim", sid=sid))),
        400,
        "invalid_logout_token",
    )
    assert ask(revoking.url, token).status_code == 200


@pytest.mark.parametrize("typ", ["logout+jwt", "JWT"])
def test_a_logout_token_is_typed_logout_jwt_or_jwt(
    revoking: RunningGateway, session_idp: LoopbackIdP, typ: str
) -> None:
    sid = uuid.uuid4().hex
    token = user_token(session_idp, "typed", sid=sid)
    logout_token = session_idp.sign(logout_claims(session_idp, sid=sid), header_extra={"typ": typ})
    assert logout(revoking.url, logout_token).status_code == 200
    assert ask(revoking.url, token).status_code == 401


def test_a_replayed_logout_token_is_refused(revoking: RunningGateway, session_idp: LoopbackIdP) -> None:
    token = session_idp.sign(logout_claims(session_idp, sid=uuid.uuid4().hex))
    assert logout(revoking.url, token).status_code == 200
    assert_error(logout(revoking.url, token), 400, "invalid_logout_token")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"content": b'{"logout_token": "x"}', "headers": {"content-type": "application/json"}}, id="json"),
        pytest.param({"data": {"token": "x"}}, id="no-field"),
        pytest.param(
            {
                "content": b"logout_token=a&logout_token=b",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            id="two-fields",
        ),
        pytest.param({"data": {"logout_token": "not.a.jwt"}}, id="garbage"),
    ],
)
def test_a_malformed_logout_request_gets_400(revoking: RunningGateway, body: dict[str, Any]) -> None:
    assert_error(
        httpx.post(f"{revoking.url}/auth/backchannel-logout", trust_env=False, **body), 400, "invalid_logout_token"
    )


def test_a_logout_with_sid_ends_that_session_only(
    revoking: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    sub = f"user-{uuid.uuid4().hex[:8]}"
    ended, other = uuid.uuid4().hex, uuid.uuid4().hex
    mine = LiveStream(revoking.url, user_token(session_idp, sub, sid=ended))
    kept = LiveStream(revoking.url, user_token(session_idp, sub, sid=other))
    try:
        mine.wait_for_events(3)
        kept.wait_for_events(3)
        response = logout(revoking.url, session_idp.sign(logout_claims(session_idp, sub=sub, sid=ended)))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert mine.ended.wait(5)
        assert mine.events[-1]["type"] == "error" and mine.events[-1]["allow_retry"] is False
        assert saw_cancellation(clean_backend, mine.thread_id)
        kept.wait_for_events(len(kept.events) + 3)
        assert not kept.ended.is_set()
    finally:
        mine.close()
        kept.close()
    assert ask(revoking.url, user_token(session_idp, sub, sid=ended)).status_code == 401
    assert ask(revoking.url, user_token(session_idp, sub, sid=other)).status_code == 200
    metrics = httpx.get(f"{revoking.url}/metrics", trust_env=False).text
    assert metric(metrics, "chatkit_gateway_revocations_total", source="backchannel") >= 1


def test_a_logout_with_only_sub_ends_the_sessions_before_it(revoking: RunningGateway, session_idp: LoopbackIdP) -> None:
    sub = f"user-{uuid.uuid4().hex[:8]}"
    now = int(time.time())
    before = user_token(session_idp, sub, iat=now - 20, sid="a")
    after = user_token(session_idp, sub, iat=now, sid="b")
    assert logout(revoking.url, session_idp.sign(logout_claims(session_idp, sub=sub, iat=now - 10))).status_code == 200
    assert ask(revoking.url, before).status_code == 401
    assert ask(revoking.url, after).status_code == 200  # signed in again after the logout


def test_an_issuer_without_backchannel_audience_accepts_no_logout_token(
    backend: Backend, session_idp: LoopbackIdP
) -> None:
    with start_gateway(gateway_config(backend.url, session_idp, {"revocation": {"enabled": True}})) as running:
        token = session_idp.sign(logout_claims(session_idp, sid="s"))
        assert_error(logout(running.url, token), 400, "invalid_logout_token")


def test_the_logout_route_answers_404_with_revocation_off(gateway: RunningGateway, session_idp: LoopbackIdP) -> None:
    assert_error(logout(gateway.url, session_idp.sign(logout_claims(session_idp, sid="s"))), 404, "not_found")
