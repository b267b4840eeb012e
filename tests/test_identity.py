"""Who the user is: the same `sub` from two issuers is two users, everywhere the gateway names one.

Over HTTP, two real identity providers sign tokens for the same `sub`; the gateway's word at the
real backend (`X-User-Id`, `metadata.userId`, `userInfo`, the signed identity), its forward-auth
answer and its rate limits all keep them apart. In process: the claim mapping itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.auth.verify import Principal
from gateway.backend_sdk import InvalidIdentity, body_sha256, verify_identity
from gateway.config import IdentityConfig, IssuerConfig
from gateway.identity import identity_of, user_id_prefixes
from tests.support.gateway import RunningGateway, bearer, gateway_config, issuer_entry, start_gateway, user_token
from tests.support.idp import LoopbackIdP, running_idp

if TYPE_CHECKING:
    from tests.support.fixtures import Backend

SECRET = "s3cret-for-issuer-tests-0123456789abcdef"
REQUESTS_PER_MINUTE = 3
THREADS_LIST = {"type": "threads.list", "params": {}}


@pytest.fixture(scope="module")
def partner_idp() -> Iterator[LoopbackIdP]:
    """A second identity provider, whose users may have the same `sub` as the first one's."""
    with running_idp() as provider:
        yield provider


@pytest.fixture(scope="module")
def two_issuers(backend: Backend, session_idp: LoopbackIdP, partner_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    entries = [issuer_entry(session_idp, user_id_prefix="corp:"), issuer_entry(partner_idp, user_id_prefix="partner:")]
    overrides = {
        "auth": {"issuers": entries},
        "upstream": {"identity_secret": SECRET},
        "ratelimit": {"requests_per_minute": REQUESTS_PER_MINUTE},
    }
    with start_gateway(gateway_config(backend.url, session_idp, overrides)) as running:
        yield running


@pytest.fixture
def client(two_issuers: RunningGateway, clean_backend: Backend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=two_issuers.url, trust_env=False, timeout=30) as http:
        yield http


def providers(session_idp: LoopbackIdP, partner_idp: LoopbackIdP) -> list[tuple[LoopbackIdP, str]]:
    return [(session_idp, "corp:"), (partner_idp, "partner:")]


def test_the_same_sub_from_two_issuers_reaches_the_backend_as_two_users(
    client: httpx.Client, clean_backend: Backend, session_idp: LoopbackIdP, partner_idp: LoopbackIdP
) -> None:
    seen = []
    for provider, prefix in providers(session_idp, partner_idp):
        token = user_token(provider, "alice", email="alice@example.com")
        response = client.post("/chatkit", json=THREADS_LIST, headers=bearer(token))
        assert response.status_code == 200, response.text

        sent = clean_backend.requests()[-1]
        headers, metadata, body = dict(sent["headers"]), sent["json"]["metadata"], sent["body"].encode()
        user_id = f"{prefix}alice"
        assert headers["x-user-id"] == metadata["userId"] == metadata["userInfo"]["id"] == user_id
        assert metadata["userInfo"]["issuer"] == provider.issuer
        signed = verify_identity(headers["x-chatkit-identity"], SECRET, body=body)
        assert signed["userId"] == user_id and signed["issuer"] == provider.issuer
        assert signed["userInfo"] == metadata["userInfo"] and signed["bodySha256"] == body_sha256(body)
        seen.append(user_id)
    assert seen[0] != seen[1]


def test_each_request_of_a_cached_token_names_its_own_tokens_user(
    client: httpx.Client, clean_backend: Backend, session_idp: LoopbackIdP, partner_idp: LoopbackIdP
) -> None:
    # The identity is made once per verified token (`Principal.derived`): tokens used again and
    # again, in turn, each still name their own issuer's user with their own claims.
    # (At most REQUESTS_PER_MINUTE per user.)
    corp = (user_token(session_idp, "dave", email="dave@corp.example"), "corp:dave", "dave@corp.example")
    partner = (user_token(partner_idp, "dave", email="dave@partner.example"), "partner:dave", "dave@partner.example")
    renamed = (user_token(session_idp, "dave", email="dave@new.example"), "corp:dave", "dave@new.example")
    for token, user_id, email in (corp, partner, corp, partner, renamed):
        response = client.post("/chatkit", json=THREADS_LIST, headers=bearer(token))
        assert response.status_code == 200, response.text
        sent = clean_backend.requests()[-1]
        headers, info = dict(sent["headers"]), sent["json"]["metadata"]["userInfo"]
        assert (headers["x-user-id"], headers["x-user-email"]) == (user_id, email)
        assert (info["id"], info["email"]) == (user_id, email)


def test_an_upload_carries_the_prefixed_user_signed_without_a_body_hash(
    client: httpx.Client, two_issuers: RunningGateway, clean_backend: Backend, partner_idp: LoopbackIdP
) -> None:
    token = user_token(partner_idp, "dave")
    files = {"file": ("notes.txt", b"hello", "text/plain")}
    response = client.post(two_issuers.uploads_url + "files", files=files, headers=bearer(token))
    assert response.status_code == 200, response.text

    headers = dict(clean_backend.requests()[-1]["headers"])
    assert headers["x-user-id"] == "partner:dave"
    signed = verify_identity(headers["x-chatkit-identity"], SECRET)
    assert signed["userId"] == signed["userInfo"]["id"] == "partner:dave" and signed["issuer"] == partner_idp.issuer
    assert signed["bodySha256"] is None and signed["pageContext"] is None
    # The body streamed past unread: this header can never vouch for a ChatKit body.
    with pytest.raises(InvalidIdentity, match="without a body hash"):
        verify_identity(headers["x-chatkit-identity"], SECRET, body=b'{"type":"threads.list","params":{}}')


def test_forward_auth_answers_each_issuers_user_apart(
    client: httpx.Client, clean_backend: Backend, session_idp: LoopbackIdP, partner_idp: LoopbackIdP
) -> None:
    for provider, prefix in providers(session_idp, partner_idp):
        response = client.get("/auth/verify", headers=bearer(user_token(provider, "bob")))
        assert response.status_code == 200, response.text
        assert response.headers["x-user-id"] == response.headers["x-auth-request-user"] == f"{prefix}bob"
        assert response.json()["userId"] == f"{prefix}bob"
    assert clean_backend.requests() == []


def test_rate_limits_count_each_issuers_user_apart(
    client: httpx.Client, clean_backend: Backend, session_idp: LoopbackIdP, partner_idp: LoopbackIdP
) -> None:
    corp, partner = bearer(user_token(session_idp, "carol")), bearer(user_token(partner_idp, "carol"))
    statuses = [client.post("/chatkit", json=THREADS_LIST, headers=corp).status_code for _ in range(4)]
    assert statuses == [200] * REQUESTS_PER_MINUTE + [429]
    # The other issuer's carol is another user, with a budget of her own.
    assert client.post("/chatkit", json=THREADS_LIST, headers=partner).status_code == 200


# ------------------------------------------------------------------------------------- in process

ISSUER = "https://idp.example.com"


def principal(**claims: Any) -> Principal:
    return Principal(subject="alice", issuer=ISSUER, claims={"sub": "alice", **claims}, expires_at=0.0, token="t")


def test_the_user_id_is_the_prefix_then_the_claim_and_user_info_names_the_issuer() -> None:
    identity = identity_of(principal(name="Alice", email="a@example.com"), IdentityConfig(), "corp:")
    assert identity.user_id == "corp:alice"
    assert identity.user_info() == {"id": "corp:alice", "name": "Alice", "email": "a@example.com", "issuer": ISSUER}
    assert identity.headers() == [(b"x-user-id", b"corp:alice"), (b"x-user-email", b"a@example.com")]


def test_extra_claims_never_replace_what_the_gateway_answers_for() -> None:
    claims = {"mail": "a@example.com", "id": "admin", "issuer": "https://evil.example", "email": "e@evil.example"}
    config = IdentityConfig(email_claim="mail", extra_claims=("id", "issuer", "email", "name", "team"))
    info = identity_of(principal(**claims, name="Eve", team="x"), config, "corp:").user_info()
    # `email` must agree with X-User-Email (from `mail`), `id` with userId, `issuer` with the token's.
    assert info == {"id": "corp:alice", "name": "Eve", "email": "a@example.com", "issuer": ISSUER, "team": "x"}


@pytest.mark.parametrize(
    ("team", "plain"),
    [
        ("x", True),
        (1.5, True),
        ({"n": [1, {"f": 2.0}]}, True),
        (float("inf"), False),
        ({"n": [1, {"f": -float("inf")}]}, False),
    ],
)
def test_an_identity_is_plain_unless_an_extra_claim_holds_a_float_that_is_not_finite(team: object, plain: bool) -> None:
    # A claim `1e400` reads as infinity; orjson would forward it as null where the body's writer must refuse it.
    identity = identity_of(principal(team=team), IdentityConfig(extra_claims=("team",)), "corp:")
    assert identity.plain is plain
    assert identity_of(principal(), IdentityConfig(), "corp:").plain


def issuer(name: str, prefix: str) -> IssuerConfig:
    return IssuerConfig(issuer=f"https://{name}.example.com", audiences=("chatkit",), user_id_prefix=prefix)


def test_prefixes_are_looked_up_by_issuer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chatkit_gateway")
    prefixes = user_id_prefixes((issuer("a", "a:"), issuer("b", "b:")))
    assert prefixes == {"https://a.example.com": "a:", "https://b.example.com": "b:"}
    assert caplog.records == []


@pytest.mark.parametrize(("short", "long"), [("", "partner:"), ("p", "pa")], ids=["empty-and-other", "nested"])
def test_a_prefix_that_begins_another_gets_a_warning_naming_both(
    short: str, long: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chatkit_gateway")
    user_id_prefixes((issuer("a", short), issuer("b", long)))
    (record,) = caplog.records
    assert "https://a.example.com" in record.getMessage() and "https://b.example.com" in record.getMessage()
