"""The attack matrix of security-anchors.md §0.1 items 1-16, over HTTP through the real gateway.

Every token is sent twice: as `Authorization: Bearer` and as the `auth_token` cookie from the
gateway's own origin (the session gateway has no `security.allowed_origins`, so same-host
applies). Every hostile token gets a 401 with its stable code, `Cache-Control: no-store` and a
fixed message, and nothing reaches the backend. Hostile rows are signed with the IdP's own key
unless the signature is the attack, so each row shows its own check refusing it. Every row also
shows that a loopback listener named by `jku`/`x5u` headers saw no connection.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.chatkit import post
from tests.support.fixtures import Backend
from tests.support.gateway import AUDIENCE, RunningGateway, gateway_config, start_gateway, user_claims
from tests.support.idp import LoopbackIdP, running_idp
from tests.support.keys import (
    DROP,
    b64url,
    ec_private,
    make_token,
    public_der,
    public_jwk,
    public_openssh,
    public_pem,
    rsa_private,
)

BODY = json.dumps({"type": "threads.list", "params": {}}).encode()
PLACEMENTS = [pytest.param("bearer", id="bearer"), pytest.param("cookie", id="cookie")]
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
JWE = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn"
ATTACKER_RSA, ATTACKER_EC = rsa_private("http-attacker"), ec_private("http-attacker")
WWW_INVALID = 'Bearer error="invalid_token"'


@dataclass(frozen=True)
class Forge:
    """Builds tokens for one IdP: valid ones, and every hostile variant the matrix names."""

    idp: LoopbackIdP
    trap_url: str

    @property
    def rsa_kid(self) -> str:
        return self.idp.kid_of("RSA")

    @property
    def ec_kid(self) -> str:
        return self.idp.kid_of("EC")

    def private(self, kid: str) -> Any:
        return self.idp.key(kid).private

    def claims(self, **changes: Any) -> dict[str, Any]:
        values = user_claims(self.idp)
        for name, value in changes.items():
            if value is DROP:
                values.pop(name, None)
            else:
                values[name] = value
        return values

    def raw_claims(self, **raw: str) -> str:
        """Claims as JSON text with some members written raw (`1e400`, `NaN`, duplicates)."""
        text = json.dumps(self.claims(**dict.fromkeys(raw, DROP)), separators=(",", ":"))[:-1]
        return text + "".join(f',"{name}":{value}' for name, value in raw.items()) + "}"

    def header(self, alg: str, kid: str, **changes: Any) -> dict[str, Any]:
        values: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid}
        values.update(changes)
        return {name: value for name, value in values.items() if value is not DROP}

    def rs256(self, payload: Any = None, *, key: Any = None, **changes: Any) -> str:
        head = self.header(**{"alg": "RS256", "kid": self.rsa_kid, **changes})
        body = self.claims() if payload is None else payload
        return make_token(head, body, key or self.private(self.rsa_kid), alg="RS256")

    def es256(self, payload: Any = None, *, key: Any = None, signature: bytes | None = None, **changes: Any) -> str:
        head = self.header(**{"alg": "ES256", "kid": self.ec_kid, **changes})
        body = self.claims() if payload is None else payload
        return make_token(head, body, key or self.private(self.ec_kid), alg="ES256", signature=signature)

    def hs256(self, secret: bytes, alg: str = "HS256") -> str:
        return make_token(self.header(alg, self.rsa_kid), self.claims(), secret, alg=alg)

    def unsigned(self, alg: str, signature: bytes = b"") -> str:
        return make_token(self.header(alg, self.rsa_kid), self.claims(), None, signature=signature)

    def der_es256(self) -> str:
        # What `cryptography` returns before the JWS r||s conversion (RFC 7518 §3.4).
        signing_input = self.es256().rsplit(".", 1)[0]
        der = self.private(self.ec_kid).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        return f"{signing_input}.{b64url(der)}"

    def mutated(self, part: int, change: Callable[[str], str]) -> str:
        """A valid token with one segment respelled; the segment ends in a partial base64 group."""
        for n in range(64):
            token = self.rs256(self.claims(pad="a" * n))
            parts = token.split(".")
            if len(parts[1]) % 4 and "-" in parts[2] and "_" in parts[2]:
                parts[part] = change(parts[part])
                mutated = ".".join(parts)
                assert mutated != token
                return mutated
        raise AssertionError("no token with a partial final group and both - and _ in its signature")


def flip_unused_bits(segment: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


Make = Callable[[Forge], str]

ATTACKS: list[Any] = [
    # 1. alg none, any spelling; empty signature and junk in its place.
    *(
        pytest.param(lambda f, a=a: f.unsigned(a), "invalid_token", id=f"alg-{a}")
        for a in ("none", "None", "NONE", "nOnE")
    ),
    pytest.param(lambda f: f.unsigned("none", b"x" * 32), "invalid_token", id="alg-none-junk-signature"),
    # 2-3. HS256 keyed with the IdP's public key, in every form, and with an empty key.
    pytest.param(lambda f: f.hs256(public_pem(f.private(f.rsa_kid))), "invalid_token", id="hs256-public-pem"),
    pytest.param(lambda f: f.hs256(public_der(f.private(f.rsa_kid))), "invalid_token", id="hs256-public-der"),
    pytest.param(lambda f: f.hs256(public_openssh(f.private(f.rsa_kid))), "invalid_token", id="hs256-openssh"),
    pytest.param(
        lambda f: f.hs256(json.dumps(f.idp.key(f.rsa_kid).public_jwk()).encode()), "invalid_token", id="hs256-jwk-json"
    ),
    pytest.param(lambda f: f.hs256(b""), "invalid_token", id="hs256-empty-key"),
    pytest.param(lambda f: f.hs256(b"", alg="HS512"), "invalid_token", id="hs512-empty-key"),
    # 4. The kid names one key, another key signed.
    pytest.param(lambda f: f.rs256(key=ATTACKER_RSA), "invalid_token", id="kid-of-idp-rsa-signed-by-other-rsa"),
    pytest.param(lambda f: f.es256(key=ATTACKER_EC), "invalid_token", id="kid-of-idp-ec-signed-by-other-ec"),
    pytest.param(lambda f: f.es256(kid=f.rsa_kid), "invalid_token", id="es256-naming-the-rsa-kid"),
    pytest.param(lambda f: f.rs256(kid=f.ec_kid), "invalid_token", id="rs256-naming-the-ec-kid"),
    # 5. Unknown and hostile kids.
    pytest.param(lambda f: f.rs256(kid="rsa-unknown"), "unknown_key", id="kid-unknown"),
    pytest.param(lambda f: f.rs256(kid="../../../../etc/passwd"), "unknown_key", id="kid-path-traversal"),
    pytest.param(lambda f: f.rs256(kid="' OR 1=1--"), "unknown_key", id="kid-sql"),
    pytest.param(lambda f: f.rs256(kid=[f.rsa_kid]), "invalid_token", id="kid-list"),
    pytest.param(lambda f: f.rs256(kid={"kid": f.rsa_kid}), "invalid_token", id="kid-object"),
    pytest.param(lambda f: f.rs256(kid=None), "invalid_token", id="kid-null"),
    pytest.param(lambda f: f.rs256(kid=DROP), "invalid_token", id="kid-missing"),
    pytest.param(lambda f: f.rs256(kid="k" * 257), "invalid_token", id="kid-257-chars"),
    pytest.param(lambda f: f.rs256(kid="k" * 10_240), "invalid_token", id="kid-10kb"),
    # 6. Keys the token carries itself; jku/x5u point at the trap listener.
    pytest.param(
        lambda f: f.rs256(key=ATTACKER_RSA, jwk=public_jwk(ATTACKER_RSA, f.rsa_kid)),
        "invalid_token",
        id="embedded-jwk-with-idp-kid",
    ),
    pytest.param(
        lambda f: f.rs256(key=ATTACKER_RSA, kid="mine", jwk=public_jwk(ATTACKER_RSA, "mine")),
        "unknown_key",
        id="embedded-jwk-with-own-kid",
    ),
    pytest.param(
        lambda f: f.rs256(key=ATTACKER_RSA, x5c=[b64url(public_der(ATTACKER_RSA))]), "invalid_token", id="embedded-x5c"
    ),
    pytest.param(lambda f: f.rs256(key=ATTACKER_RSA, jku=f.trap_url), "invalid_token", id="jku-with-idp-kid"),
    pytest.param(
        lambda f: f.rs256(key=ATTACKER_RSA, kid="attacker", jku=f.trap_url), "unknown_key", id="jku-with-own-kid"
    ),
    pytest.param(lambda f: f.rs256(key=ATTACKER_RSA, x5u=f.trap_url), "invalid_token", id="x5u-with-idp-kid"),
    pytest.param(
        lambda f: f.es256(key=ATTACKER_EC, kid="attacker-ec", x5u=f.trap_url), "unknown_key", id="x5u-with-own-kid"
    ),
    # 7. crit: no extension is understood.
    pytest.param(lambda f: f.rs256(crit=["x-unknown"], **{"x-unknown": 1}), "invalid_token", id="crit-unknown"),
    pytest.param(lambda f: f.rs256(crit=["b64"], b64=False), "invalid_token", id="crit-b64"),
    # 8. Time claims.
    pytest.param(lambda f: f.rs256(f.claims(exp=time.time() - 3600)), "token_expired", id="exp-past"),
    pytest.param(lambda f: f.rs256(f.claims(nbf=time.time() + 3600)), "token_not_yet_valid", id="nbf-future"),
    pytest.param(lambda f: f.rs256(f.claims(iat=time.time() + 3600)), "invalid_claims", id="iat-future"),
    pytest.param(lambda f: f.rs256(f.claims(exp=DROP)), "invalid_claims", id="exp-missing"),
    pytest.param(lambda f: f.rs256(f.claims(exp=str(int(time.time()) + 3600))), "invalid_claims", id="exp-string"),
    pytest.param(lambda f: f.rs256(f.claims(exp=True)), "invalid_claims", id="exp-bool"),
    pytest.param(lambda f: f.rs256(f.claims(exp=[time.time() + 3600])), "invalid_claims", id="exp-list"),
    pytest.param(lambda f: f.rs256(f.claims(exp=None)), "invalid_claims", id="exp-null"),
    pytest.param(lambda f: f.rs256(f.raw_claims(exp="1e400")), "invalid_claims", id="exp-1e400"),
    pytest.param(lambda f: f.rs256(f.raw_claims(exp="NaN")), "invalid_token", id="exp-NaN-is-not-json"),
    # 9. Issuer, audience, subject.
    pytest.param(lambda f: f.rs256(f.claims(iss="https://evil.example")), "unknown_issuer", id="iss-wrong"),
    pytest.param(lambda f: f.rs256(f.claims(iss=f.idp.issuer + "/")), "unknown_issuer", id="iss-trailing-slash"),
    pytest.param(lambda f: f.rs256(f.claims(iss=DROP)), "unknown_issuer", id="iss-missing"),
    pytest.param(lambda f: f.rs256(f.claims(iss=[f.idp.issuer])), "unknown_issuer", id="iss-list"),
    pytest.param(
        lambda f: make_token(
            {"alg": "RS256", "kid": "their-key", "typ": "JWT"}, f.claims(iss="https://other-idp.example"), ATTACKER_RSA
        ),
        "unknown_issuer",
        id="unknown-issuer-with-its-own-key",
    ),
    pytest.param(lambda f: f.rs256(f.claims(aud="another-app")), "invalid_claims", id="token-for-another-audience"),
    pytest.param(lambda f: f.rs256(f.claims(aud=DROP)), "invalid_claims", id="aud-missing"),
    pytest.param(lambda f: f.rs256(f.claims(aud=["x", "y"])), "invalid_claims", id="aud-list-without-ours"),
    pytest.param(lambda f: f.rs256(f.claims(aud=AUDIENCE.upper())), "invalid_claims", id="aud-other-case"),
    pytest.param(lambda f: f.rs256(f.claims(sub=DROP)), "invalid_claims", id="sub-missing"),
    pytest.param(lambda f: f.rs256(f.claims(sub=123)), "invalid_claims", id="sub-number"),
    pytest.param(lambda f: f.rs256(f.claims(sub=["user-1"])), "invalid_claims", id="sub-list"),
    pytest.param(lambda f: f.rs256(f.claims(sub="")), "invalid_claims", id="sub-empty"),
    # 10. Explicit typing, JWE, nested JWTs, ID tokens.
    *(
        pytest.param(lambda f, t=t: f.rs256(typ=t), "invalid_token", id=f"typ-{t or 'empty'}")
        for t in ("JWE", "secevent+jwt", "JOSE", "")
    ),
    pytest.param(lambda f: JWE, "invalid_token", id="jwe-5-segments"),
    pytest.param(lambda f: f.rs256(f.rs256(), cty="JWT"), "invalid_token", id="cty-nested-jwt"),
    pytest.param(
        lambda f: f.rs256(f.claims(aud="spa-client-id", nonce="n-0S6", at_hash="77QmUPtjPfzWtF2AnpK9RQ")),
        "invalid_claims",
        id="id-token-as-access-token",
    ),
    # 11. Duplicate members.
    pytest.param(
        lambda f: make_token(
            '{"alg":"none","alg":"RS256","kid":"' + f.rsa_kid + '"}', f.claims(), f.private(f.rsa_kid), alg="RS256"
        ),
        "invalid_token",
        id="duplicate-alg",
    ),
    pytest.param(
        lambda f: make_token(
            '{"alg":"RS256","kid":"other","kid":"' + f.rsa_kid + '"}', f.claims(), f.private(f.rsa_kid), alg="RS256"
        ),
        "invalid_token",
        id="duplicate-kid",
    ),
    pytest.param(lambda f: f.rs256(f.raw_claims(sub='"admin","sub":"user-1"')), "invalid_token", id="duplicate-sub"),
    # 12. Non-canonical base64.
    pytest.param(lambda f: f.mutated(2, lambda s: s + "="), "invalid_token", id="b64-signature-padding"),
    pytest.param(lambda f: f.mutated(2, lambda s: s + "=="), "invalid_token", id="b64-signature-padding-2"),
    pytest.param(
        lambda f: f.mutated(2, lambda s: s.replace("-", "+").replace("_", "/")),
        "invalid_token",
        id="b64-signature-standard-alphabet",
    ),
    pytest.param(lambda f: f.mutated(2, lambda s: s[:10] + "!" + s[10:]), "invalid_token", id="b64-bang-inserted"),
    pytest.param(lambda f: f.mutated(2, lambda s: s[:10] + " " + s[10:]), "invalid_token", id="b64-space-inserted"),
    pytest.param(lambda f: f.mutated(2, flip_unused_bits), "invalid_token", id="b64-signature-trailing-bits"),
    pytest.param(lambda f: f.mutated(1, flip_unused_bits), "invalid_token", id="b64-payload-trailing-bits"),
    pytest.param(lambda f: f.mutated(0, lambda s: s + "="), "invalid_token", id="b64-header-padding"),
    pytest.param(lambda f: f.mutated(1, lambda s: s + "=="), "invalid_token", id="b64-payload-padding"),
    # 13. Malformed shapes, never a 500.
    pytest.param(lambda f: "garbage", "invalid_token", id="garbage"),
    pytest.param(lambda f: "a.b", "invalid_token", id="2-segments"),
    pytest.param(lambda f: f.rs256().rsplit(".", 1)[0], "invalid_token", id="2-segments-no-signature"),
    pytest.param(lambda f: "x." + f.rs256(), "invalid_token", id="4-segments"),
    pytest.param(lambda f: "...", "invalid_token", id="dots-only"),
    pytest.param(lambda f: "a.b.c.d.e.f", "invalid_token", id="6-segments"),
    pytest.param(
        lambda f: make_token("not json", f.claims(), f.private(f.rsa_kid), alg="RS256"),
        "invalid_token",
        id="header-not-json",
    ),
    pytest.param(
        lambda f: make_token('["RS256"]', f.claims(), f.private(f.rsa_kid), alg="RS256"),
        "invalid_token",
        id="header-array",
    ),
    pytest.param(
        lambda f: make_token(
            '{"alg":"RS256","kid":"' + f.rsa_kid + '","x":' + nested(1000) + "}", f.claims(), None, signature=b"s"
        ),
        "invalid_token",
        id="header-1000-deep",
    ),
    pytest.param(lambda f: f.rs256(f.raw_claims(x=nested(1000))), "invalid_token", id="payload-1000-deep"),
    pytest.param(lambda f: f.rs256(alg=["RS256"]), "invalid_token", id="alg-list"),
    pytest.param(lambda f: f.rs256(alg={"RS256": 1}), "invalid_token", id="alg-object"),
    pytest.param(lambda f: f.rs256(alg=DROP), "invalid_token", id="alg-missing"),
    pytest.param(lambda f: f.rs256(alg="PS256"), "invalid_token", id="alg-not-allowed"),
    pytest.param(lambda f: f.rs256("[]"), "invalid_token", id="payload-array"),
    # 14. Size: over `auth.max_token_bytes` (8192), and a header far past it.
    pytest.param(lambda f: f.rs256(f.claims(pad="p" * 8192)), "invalid_token", id="token-over-8kb"),
    # (Past `server.max_header_bytes` a header block gets 431 before any credential is read:
    # tests/test_edge.py. This one stays under that bound.)
    pytest.param(lambda f: "a" * 20_000, "invalid_token", id="garbage-20kb"),
    # 15. ECDSA signature shapes.
    pytest.param(lambda f: f.es256(signature=bytes(64)), "invalid_token", id="es256-r-s-zero"),
    pytest.param(lambda f: f.es256(signature=P256_ORDER.to_bytes(32, "big") * 2), "invalid_token", id="es256-r-s-n"),
    pytest.param(lambda f: f.der_es256(), "invalid_token", id="es256-der-signature"),
    pytest.param(lambda f: f.es256().rsplit(".", 1)[0] + ".", "invalid_token", id="es256-empty-signature"),
    pytest.param(lambda f: f.rs256().rsplit(".", 1)[0] + ".", "invalid_token", id="rs256-empty-signature"),
]

ACCEPTED: list[Any] = [
    pytest.param(lambda f: f.rs256(), id="valid-rs256"),
    pytest.param(lambda f: f.es256(), id="valid-es256"),
    pytest.param(lambda f: f.rs256(f.claims(aud=["another-app", AUDIENCE])), id="aud-list-containing-ours"),
    pytest.param(lambda f: f.rs256(typ="at+jwt"), id="typ-at+jwt"),
    pytest.param(lambda f: f.rs256(typ=DROP), id="typ-absent"),
    # The IdP's own signature with jku/x5u headers: the headers are ignored, never followed.
    pytest.param(lambda f: f.rs256(jku=f.trap_url, x5u=f.trap_url), id="idp-signed-with-jku-and-x5u"),
]


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trap() -> Iterator[socket.socket]:
    """A loopback listener that no token header may make the gateway connect to."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        yield listener


def trap_url(trap: socket.socket) -> str:
    return f"http://127.0.0.1:{trap.getsockname()[1]}/jwks.json"


def assert_untouched(trap: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = trap.accept()
        conn.close()


@pytest.fixture(scope="module")
def forge(session_idp: LoopbackIdP, trap: socket.socket) -> Forge:
    return Forge(session_idp, trap_url(trap))


@pytest.fixture(scope="module")
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=30) as client:
        yield client


def _origin(client: httpx.Client) -> str:
    """The gateway's own origin: allowed for cookies when `security.allowed_origins` is empty."""
    return str(client.base_url).rstrip("/")


def credential(placement: str, token: str, origin: str) -> dict[str, str]:
    if placement == "bearer":
        return {"authorization": f"Bearer {token}"}
    return {"cookie": f"auth_token={token}", "origin": origin}


def send(client: httpx.Client, placement: str, token: str) -> httpx.Response:
    return post(client, body=BODY, headers=credential(placement, token, _origin(client)))


def assert_refused(response: httpx.Response, code: str, *, bearer: bool, token: str = "") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"]
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    # The fixed message never quotes the token.
    assert not any(len(part) >= 8 and part in response.text for part in token.split("."))
    if code == "missing_credentials":
        assert response.headers["www-authenticate"].startswith("Bearer realm=")
    elif bearer:
        assert response.headers["www-authenticate"] == WWW_INVALID


def forwarded_user(backend: Backend) -> str:
    (request,) = backend.requests()
    return dict(request["headers"])["x-user-id"]


# -- the matrix -------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize(("make", "code"), ATTACKS)
def test_hostile_token_gets_401_with_its_code_and_never_reaches_the_backend(
    http: httpx.Client,
    clean_backend: Backend,
    forge: Forge,
    trap: socket.socket,
    make: Make,
    code: str,
    placement: str,
) -> None:
    token = make(forge)
    response = send(http, placement, token)
    assert_refused(response, code, bearer=placement == "bearer", token=token)
    assert clean_backend.requests() == []
    assert_untouched(trap)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("make", ACCEPTED)
def test_valid_token_is_relayed_as_its_user(
    http: httpx.Client, clean_backend: Backend, forge: Forge, trap: socket.socket, make: Make, placement: str
) -> None:
    response = send(http, placement, make(forge))
    assert response.status_code == 200, response.text
    assert forwarded_user(clean_backend) == "user-1"
    assert_untouched(trap)


@pytest.mark.parametrize(
    ("placement", "headers", "code"),
    [
        pytest.param("bearer", {"authorization": "Bearer"}, "invalid_token", id="bearer-scheme-without-token"),
        pytest.param("cookie", {"cookie": "auth_token="}, "missing_credentials", id="empty-cookie"),
        pytest.param("cookie", {"cookie": 'auth_token=""'}, "missing_credentials", id="empty-quoted-cookie"),
        pytest.param("none", {}, "missing_credentials", id="nothing"),
        pytest.param("none", {"cookie": "other=1; session=abc"}, "missing_credentials", id="other-cookies-only"),
    ],
)
def test_empty_or_absent_credential_gets_401(
    http: httpx.Client, clean_backend: Backend, placement: str, headers: dict[str, str], code: str
) -> None:
    response = post(http, body=BODY, headers={**headers, "origin": _origin(http)})
    assert_refused(response, code, bearer=placement == "bearer")
    assert clean_backend.requests() == []


def test_basic_authorization_without_a_cookie_is_missing_credentials(
    http: httpx.Client, clean_backend: Backend
) -> None:
    response = post(http, body=BODY, headers={"authorization": "Basic dXNlcjpwYXNzd29yZA=="})
    assert_refused(response, "missing_credentials", bearer=False)
    assert response.headers["www-authenticate"].startswith("Bearer realm=")
    assert clean_backend.requests() == []


def test_basic_authorization_does_not_hide_a_valid_cookie(
    http: httpx.Client, clean_backend: Backend, forge: Forge
) -> None:
    headers = {"authorization": "Basic dXNlcjpwYXNzd29yZA==", **credential("cookie", forge.rs256(), _origin(http))}
    response = post(http, body=BODY, headers=headers)
    assert response.status_code == 200, response.text
    assert forwarded_user(clean_backend) == "user-1"


def test_valid_bearer_wins_over_a_garbage_cookie(http: httpx.Client, clean_backend: Backend, forge: Forge) -> None:
    headers = {**credential("bearer", forge.rs256(), ""), "cookie": "auth_token=garbage.garbage.garbage"}
    response = post(http, body=BODY, headers=headers)
    assert response.status_code == 200, response.text
    assert forwarded_user(clean_backend) == "user-1"


def test_garbage_bearer_is_refused_even_with_a_valid_cookie(
    http: httpx.Client, clean_backend: Backend, forge: Forge
) -> None:
    headers = {**credential("cookie", forge.rs256(), _origin(http)), "authorization": "Bearer garbage.garbage.garbage"}
    response = post(http, body=BODY, headers=headers)
    assert_refused(response, "invalid_token", bearer=True)
    assert clean_backend.requests() == []


def test_cookie_header_over_16_kb_is_refused_before_parsing(
    http: httpx.Client, clean_backend: Backend, forge: Forge
) -> None:
    cookie = f"auth_token={forge.rs256()}; filler={'f' * 17_000}"
    response = post(http, body=BODY, headers={"cookie": cookie, "origin": _origin(http)})
    assert response.status_code in (401, 431), response.text
    if response.status_code == 401:
        assert_refused(response, "invalid_token", bearer=False)
    assert clean_backend.requests() == []


# Cookie tossing (RFC 6265 8.5-8.6): a sibling subdomain or a plain-http page adds a second
# `auth_token` for the same host. Which one counts must never be a parser's choice.
AMBIGUOUS_COOKIES: list[Any] = [
    pytest.param(["auth_token={user}; auth_token={other}"], id="two-valid-tokens-in-one-header"),
    pytest.param(["auth_token={user}", "auth_token={other}"], id="two-valid-tokens-in-two-headers"),
    pytest.param(["auth_token=garbage; auth_token={user}"], id="garbage-then-valid"),
    pytest.param(["auth_token={user}; auth_token=garbage"], id="valid-then-garbage"),
    pytest.param(["auth_token={user}; auth_token="], id="valid-then-empty"),
    pytest.param(['auth_token = {other} ;auth_token="{user}"'], id="spaced-and-quoted"),
]


def cookie_headers(templates: list[str], forge: Forge, origin: str) -> list[tuple[str, str]]:
    user, other = forge.rs256(), forge.rs256(forge.claims(sub="mallory"))
    headers = [("cookie", template.format(user=user, other=other)) for template in templates]
    return [*headers, ("origin", origin), ("content-type", "application/json")]


@pytest.mark.parametrize("templates", AMBIGUOUS_COOKIES)
def test_a_credential_cookie_with_two_values_gets_401_ambiguous_credentials(
    http: httpx.Client, clean_backend: Backend, forge: Forge, templates: list[str]
) -> None:
    response = http.post("/chatkit", content=BODY, headers=cookie_headers(templates, forge, _origin(http)))
    assert_refused(response, "ambiguous_credentials", bearer=False)
    assert clean_backend.requests() == []


@pytest.mark.parametrize(
    "templates",
    [
        pytest.param(["auth_token={user}; auth_token={user}"], id="same-value-twice"),
        pytest.param(["auth_token={user}", 'auth_token="{user}"'], id="same-value-quoted-in-a-second-header"),
        pytest.param(["auth_token={user}; other={other}; other=x"], id="other-cookie-twice"),
    ],
)
def test_a_credential_cookie_repeated_with_one_value_is_accepted(
    http: httpx.Client, clean_backend: Backend, forge: Forge, templates: list[str]
) -> None:
    response = http.post("/chatkit", content=BODY, headers=cookie_headers(templates, forge, _origin(http)))
    assert response.status_code == 200, response.text
    assert forwarded_user(clean_backend) == "user-1"


def test_a_bearer_token_is_not_made_ambiguous_by_cookies(
    http: httpx.Client, clean_backend: Backend, forge: Forge
) -> None:
    headers = cookie_headers(["auth_token={other}; auth_token=garbage"], forge, "")
    response = http.post("/chatkit", content=BODY, headers=[*headers, ("authorization", f"Bearer {forge.rs256()}")])
    assert response.status_code == 200, response.text
    assert forwarded_user(clean_backend) == "user-1"


# -- a gateway of our own: its log, its key fetches -------------------------------------------


@dataclass(frozen=True)
class Own:
    gateway: RunningGateway
    idp: LoopbackIdP
    forge: Forge
    client: httpx.Client


@pytest.fixture(scope="module")
def own(backend: Backend, trap: socket.socket) -> Iterator[Own]:
    """A gateway logging at debug, in front of an IdP nobody else uses, so its fetches are countable."""
    with running_idp() as idp:
        config = gateway_config(backend.url, idp, {"logging": {"level": "debug", "format": "json"}})
        with (
            start_gateway(config) as running,
            httpx.Client(base_url=running.url, trust_env=False, timeout=30) as client,
        ):
            yield Own(running, idp, Forge(idp, trap_url(trap)), client)


LOGGED_ATTACKS = [
    "exp-past",
    "hs256-public-pem",
    "alg-none",
    "kid-of-idp-rsa-signed-by-other-rsa",
    "kid-unknown",
    "jku-with-own-kid",
    "token-for-another-audience",
    "duplicate-sub",
    "header-1000-deep",
    "es256-r-s-zero",
    "b64-signature-padding",
    "token-over-8kb",
]


def test_no_token_cookie_or_bearer_header_reaches_the_log(own: Own, clean_backend: Backend) -> None:
    by_id = {param.id: param.values[0] for param in ATTACKS}
    tokens = [by_id[name](own.forge) for name in LOGGED_ATTACKS]
    valid = [own.forge.rs256(own.forge.claims(sub=f"logged-{i}")) for i in range(2)] + [own.forge.es256()]
    side_cookie = "s3ss10n-c00k1e-v4lue-never-logged"
    origin = _origin(own.client)
    for token in tokens + valid:
        for placement in ("bearer", "cookie"):
            headers = credential(placement, token, origin)
            if placement == "cookie":
                headers["cookie"] += f"; session={side_cookie}"
            response = post(own.client, body=BODY, headers=headers)
            assert response.status_code == (200 if token in valid else 401), response.text
    assert len(clean_backend.requests()) == 2 * len(valid)

    log = own.gateway.log()  # read while the gateway still runs: the file goes with it
    assert log.strip(), "the gateway logged nothing, so this check would prove nothing"
    for line in log.splitlines():
        assert isinstance(json.loads(line), dict), line  # SPEC 10: in json format every line is JSON
    for token in tokens + valid:
        assert token not in log
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            assert signature not in log
    for secret in ("Bearer ", "bearer ", "auth_token=", side_cookie):
        assert secret not in log


def test_a_flood_of_unknown_kids_costs_at_most_one_jwks_fetch(own: Own, clean_backend: Backend) -> None:
    before = own.idp.jwks_fetches
    started = time.monotonic()
    for i in range(20):
        token = own.forge.rs256(kid=f"flood-{i}", key=ATTACKER_RSA)
        assert_refused(send(own.client, "bearer", token), "unknown_key", bearer=True, token=token)
    assert time.monotonic() - started < 30  # one cool-down window (auth.jwks.refresh_cooldown_seconds)
    assert own.idp.jwks_fetches - before <= 1
    assert clean_backend.requests() == []


def test_keys_already_loaded_keep_serving_while_the_idp_is_down(own: Own, clean_backend: Backend) -> None:
    own.idp.mode = "down"
    try:
        for placement in ("bearer", "cookie"):
            assert send(own.client, placement, own.forge.rs256(own.forge.claims(sub="rsa-user"))).status_code == 200
            assert send(own.client, placement, own.forge.es256(own.forge.claims(sub="ec-user"))).status_code == 200
            token = own.forge.rs256(kid="rotated-in-later")
            assert_refused(send(own.client, placement, token), "unknown_key", bearer=placement == "bearer")
    finally:
        own.idp.mode = "ok"
    users = [dict(request["headers"])["x-user-id"] for request in clean_backend.requests()]
    assert users == ["rsa-user", "ec-user"] * 2
