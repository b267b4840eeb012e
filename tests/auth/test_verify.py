"""The token verifier against the attack matrix of security-anchors.md §0.1 items 1-16.

Every hostile row is signed with the right key unless the attack is the signature itself, so the
row shows that its own check rejects it, not a signature failure further down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.jws import parse_compact_jws
from gateway.auth.verify import Principal, TokenVerifier
from gateway.config import AuthConfig, IssuerConfig
from gateway.errors import (
    AuthError,
    InvalidClaims,
    InvalidToken,
    TokenExpired,
    TokenNotYetValid,
    UnknownIssuer,
    UnknownKey,
)
from tests.support.clock import FakeClock
from tests.support.keys import (
    AUDIENCE,
    DROP,
    ISSUER,
    NOW,
    StaticKeySource,
    auth_config,
    b64url,
    claims,
    ec_private,
    issuer_config,
    jose_token,
    make_token,
    public_der,
    public_jwk,
    public_openssh,
    public_pem,
    rsa_private,
    run_now,
    sha256,
)

pytestmark = pytest.mark.anyio

RSA_A, RSA_B, EC_1 = rsa_private("a"), rsa_private("b"), ec_private("1")
ATTACKER_RSA, ATTACKER_EC = rsa_private("attacker"), ec_private("attacker")
# EC first: python-jose with a raw JWKS dict rejects valid RS256 tokens against this order (J43).
JWKS = [public_jwk(EC_1, "ec-1"), public_jwk(RSA_A, "rsa-a"), public_jwk(RSA_B, "rsa-b")]
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass
class Rig:
    verifier: TokenVerifier
    source: StaticKeySource
    clock: FakeClock


def rig(*issuers: IssuerConfig, source: StaticKeySource | None = None, **settings: Any) -> Rig:
    auth = auth_config(*issuers, **settings)
    source = source or StaticKeySource(JWKS)
    clock = FakeClock()
    return Rig(TokenVerifier(auth, {i.issuer: source for i in auth.issuers}, clock=clock), source, clock)


def header(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"alg": "RS256", "kid": "rsa-a", "typ": "JWT"}
    values.update(changes)
    return {name: value for name, value in values.items() if value is not DROP}


def rs256(payload: Any = None, *, key: Any = RSA_A, **changes: Any) -> str:
    return make_token(header(**changes), claims() if payload is None else payload, key, alg="RS256")


def es256(payload: Any = None, *, signature: bytes | None = None, **changes: Any) -> str:
    head = header(**{"alg": "ES256", "kid": "ec-1", **changes})
    return make_token(head, claims() if payload is None else payload, EC_1, signature=signature)


def raw_claims(**raw: str) -> str:
    """Claims as JSON text with some members written raw (`1e400`, `NaN`, duplicates)."""
    text = json.dumps(claims(**dict.fromkeys(raw, DROP)), separators=(",", ":"))[:-1]
    return text + "".join(f',"{name}":{value}' for name, value in raw.items()) + "}"


def hs256(secret: bytes, kid: str = "rsa-a") -> str:
    return make_token({"alg": "HS256", "kid": kid, "typ": "JWT"}, claims(), secret)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


Row = Callable[[], str]

# The fixed messages name the check that fired, so each row proves its own check rejects it.
MALFORMED = InvalidToken("The token is malformed.")
BAD_HEADER = InvalidToken("The token header is not acceptable.")
TOO_LARGE = InvalidToken("The token is too large.")
ENCRYPTED = InvalidToken("Encrypted tokens are not accepted.")
ALG_NOT_ALLOWED = InvalidToken("The token's algorithm is not allowed.")
KEY_MISMATCH = InvalidToken("The token's algorithm does not match its key.")
BAD_SIGNATURE = InvalidToken("The token's signature is not valid.")
MISSING_CLAIM = InvalidClaims("A required claim is missing.")
BAD_TIME = InvalidClaims("A time claim is not a number.")
FUTURE_IAT = InvalidClaims("The token was issued in the future.")
BAD_AUDIENCE = InvalidClaims("The token's audience is not acceptable.")
BAD_SUBJECT = InvalidClaims("The token's subject is not acceptable.")

ATTACKS: list[Any] = [
    # 1. alg none, any spelling; with the empty signature and with junk in its place.
    *(
        pytest.param(lambda a=a: make_token(header(alg=a), claims(), None), MALFORMED, id=f"alg-{a}-empty-signature")
        for a in ("none", "None", "NONE", "nOnE")
    ),
    *(
        pytest.param(
            lambda a=a: make_token(header(alg=a), claims(), None, signature=b"x" * 32),
            ALG_NOT_ALLOWED,
            id=f"alg-{a}-junk-signature",
        )
        for a in ("none", "nOnE")
    ),
    # 2-3. HS256 with the IdP's public key as the secret, in every form, and with an empty secret.
    pytest.param(lambda: hs256(public_pem(RSA_A)), ALG_NOT_ALLOWED, id="hs256-secret-public-pem"),
    pytest.param(lambda: hs256(public_der(RSA_A)), ALG_NOT_ALLOWED, id="hs256-secret-public-der"),
    pytest.param(lambda: hs256(public_openssh(RSA_A)), ALG_NOT_ALLOWED, id="hs256-secret-openssh"),
    pytest.param(
        lambda: hs256(json.dumps(public_jwk(RSA_A, "rsa-a")).encode()), ALG_NOT_ALLOWED, id="hs256-secret-jwk-json"
    ),
    pytest.param(lambda: hs256(public_openssh(EC_1), kid="ec-1"), ALG_NOT_ALLOWED, id="hs256-secret-ec-openssh"),
    pytest.param(lambda: hs256(b""), ALG_NOT_ALLOWED, id="hs256-empty-secret"),
    pytest.param(lambda: make_token(header(alg="HS512"), claims(), b""), ALG_NOT_ALLOWED, id="hs512-empty-secret"),
    # 4. The kid names one key, another signed (python-jose tries every key and accepts).
    pytest.param(lambda: rs256(key=RSA_B), BAD_SIGNATURE, id="kid-a-signed-by-b"),
    pytest.param(lambda: es256(kid="rsa-a"), KEY_MISMATCH, id="es256-kid-of-rsa-key"),
    pytest.param(lambda: rs256(kid="ec-1"), KEY_MISMATCH, id="rs256-kid-of-ec-key"),
    # 5. Unknown and hostile kids.
    pytest.param(lambda: rs256(kid="rsa-z"), UnknownKey(), id="kid-unknown"),
    pytest.param(lambda: rs256(kid="../../../../dev/null"), UnknownKey(), id="kid-path-traversal"),
    pytest.param(lambda: rs256(kid="' OR 1=1--"), UnknownKey(), id="kid-sql"),
    pytest.param(lambda: rs256(kid=["rsa-a"]), BAD_HEADER, id="kid-list"),
    pytest.param(lambda: rs256(kid={"kid": "rsa-a"}), BAD_HEADER, id="kid-object"),
    pytest.param(lambda: rs256(kid=1), BAD_HEADER, id="kid-number"),
    pytest.param(lambda: rs256(kid=None), BAD_HEADER, id="kid-null"),
    pytest.param(lambda: rs256(kid=""), BAD_HEADER, id="kid-empty"),
    pytest.param(lambda: rs256(kid=DROP), BAD_HEADER, id="kid-missing"),
    pytest.param(lambda: rs256(kid="k" * 257), BAD_HEADER, id="kid-257-chars"),
    pytest.param(lambda: rs256(kid="k" * 10_240), TOO_LARGE, id="kid-10kb"),
    # 6. Keys carried by the token itself (jku/x5u: see the loopback-listener test below).
    pytest.param(
        lambda: rs256(key=ATTACKER_RSA, jwk=public_jwk(ATTACKER_RSA, "rsa-a")),
        BAD_SIGNATURE,
        id="embedded-jwk-known-kid",
    ),
    pytest.param(
        lambda: rs256(key=ATTACKER_RSA, kid="mine", jwk=public_jwk(ATTACKER_RSA, "mine")),
        UnknownKey(),
        id="embedded-jwk-own-kid",
    ),
    pytest.param(
        lambda: rs256(key=ATTACKER_RSA, x5c=[b64url(public_der(ATTACKER_RSA))]), BAD_SIGNATURE, id="embedded-x5c"
    ),
    # 7. crit: no extension is understood, so any crit is refused (RFC 7515 §4.1.11).
    pytest.param(lambda: rs256(crit=["x-unknown"], **{"x-unknown": 1}), BAD_HEADER, id="crit-unknown"),
    pytest.param(lambda: rs256(crit=["b64"], b64=False), BAD_HEADER, id="crit-b64"),
    pytest.param(lambda: rs256(crit=[]), BAD_HEADER, id="crit-empty"),
    # 8. Time claims.
    pytest.param(lambda: rs256(claims(exp=NOW - 31)), TokenExpired(), id="exp-past-beyond-leeway"),
    pytest.param(lambda: rs256(claims(exp=NOW - 30)), TokenExpired(), id="exp-at-leeway-edge"),
    pytest.param(lambda: rs256(claims(nbf=NOW + 3600)), TokenNotYetValid(), id="nbf-future"),
    pytest.param(lambda: rs256(claims(nbf=NOW + 31)), TokenNotYetValid(), id="nbf-just-beyond-leeway"),
    pytest.param(lambda: rs256(claims(iat=NOW + 3600)), FUTURE_IAT, id="iat-future"),
    pytest.param(lambda: rs256(claims(iat=NOW + 31)), FUTURE_IAT, id="iat-just-beyond-leeway"),
    pytest.param(lambda: rs256(claims(exp=DROP)), MISSING_CLAIM, id="exp-missing"),
    pytest.param(lambda: rs256(claims(iat=DROP)), MISSING_CLAIM, id="iat-missing-but-required"),
    pytest.param(lambda: rs256(claims(exp="9999999999")), BAD_TIME, id="exp-numeric-string"),
    pytest.param(lambda: rs256(claims(exp=True)), BAD_TIME, id="exp-bool"),
    pytest.param(lambda: rs256(claims(exp=[NOW + 300])), BAD_TIME, id="exp-list"),
    pytest.param(lambda: rs256(claims(exp={"t": NOW + 300})), BAD_TIME, id="exp-object"),
    pytest.param(lambda: rs256(claims(exp=None)), BAD_TIME, id="exp-null"),
    pytest.param(lambda: rs256(raw_claims(exp="1e400")), BAD_TIME, id="exp-1e400"),
    pytest.param(lambda: rs256(raw_claims(exp="1" + "0" * 400)), BAD_TIME, id="exp-400-digit-int"),
    pytest.param(lambda: rs256(raw_claims(exp="NaN")), MALFORMED, id="exp-NaN-is-not-json"),
    pytest.param(lambda: rs256(raw_claims(exp="Infinity")), MALFORMED, id="exp-Infinity-is-not-json"),
    pytest.param(lambda: rs256(claims(nbf="0")), BAD_TIME, id="nbf-string"),
    pytest.param(lambda: rs256(claims(iat=False)), BAD_TIME, id="iat-bool"),
    # 9. Issuer, audience, subject.
    pytest.param(lambda: rs256(claims(iss="https://evil.example.com")), UnknownIssuer(), id="iss-wrong"),
    pytest.param(lambda: rs256(claims(iss=ISSUER + "/")), UnknownIssuer(), id="iss-trailing-slash"),
    pytest.param(lambda: rs256(claims(iss=DROP)), UnknownIssuer(), id="iss-missing"),
    pytest.param(lambda: rs256(claims(iss=[ISSUER])), UnknownIssuer(), id="iss-list"),
    pytest.param(lambda: rs256(claims(aud="other")), BAD_AUDIENCE, id="aud-wrong"),
    pytest.param(lambda: rs256(claims(aud=DROP)), BAD_AUDIENCE, id="aud-missing"),
    pytest.param(lambda: rs256(claims(aud=[AUDIENCE, 5])), BAD_AUDIENCE, id="aud-list-with-number"),
    pytest.param(lambda: rs256(claims(aud=[])), BAD_AUDIENCE, id="aud-empty-list"),
    pytest.param(lambda: rs256(claims(aud={"aud": AUDIENCE})), BAD_AUDIENCE, id="aud-object"),
    pytest.param(lambda: rs256(claims(aud=AUDIENCE.upper())), BAD_AUDIENCE, id="aud-other-case"),
    pytest.param(lambda: rs256(claims(sub=DROP)), MISSING_CLAIM, id="sub-missing"),
    pytest.param(lambda: rs256(claims(sub=123)), BAD_SUBJECT, id="sub-number"),
    pytest.param(lambda: rs256(claims(sub="")), BAD_SUBJECT, id="sub-empty"),
    pytest.param(lambda: rs256(claims(sub=None)), BAD_SUBJECT, id="sub-null"),
    pytest.param(lambda: rs256(claims(sub=["alice"])), BAD_SUBJECT, id="sub-list"),
    # 10. Explicit typing, JWE, nested JWTs, ID tokens.
    *(
        pytest.param(lambda t=t: rs256(typ=t), BAD_HEADER, id=f"typ-{t}")
        for t in ("JWE", "secevent+jwt", "at+jwe", "", "JOSE", "application/jwt", "\u0130at+jwt")
    ),
    pytest.param(lambda: rs256(typ=1), BAD_HEADER, id="typ-number"),
    pytest.param(lambda: rs256(typ=None), BAD_HEADER, id="typ-null"),
    pytest.param(
        lambda: "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn", ENCRYPTED, id="jwe-5-segments"
    ),
    pytest.param(lambda: rs256(rs256(), cty="JWT"), BAD_HEADER, id="cty-nested-jwt"),
    pytest.param(lambda: rs256(cty="json"), BAD_HEADER, id="cty-any"),
    pytest.param(
        lambda: rs256(claims(aud="spa-client-id", nonce="n-0S6", at_hash="77QmUPtjPfzWtF2AnpK9RQ")),
        BAD_AUDIENCE,
        id="id-token-as-access-token",
    ),
    # 11. Duplicate members: one token, two meanings (RFC 8725 §2.6).
    pytest.param(
        lambda: make_token('{"alg":"none","alg":"RS256","kid":"rsa-a"}', claims(), RSA_A, alg="RS256"),
        MALFORMED,
        id="duplicate-alg",
    ),
    pytest.param(
        lambda: make_token('{"alg":"RS256","kid":"rsa-b","kid":"rsa-a"}', claims(), RSA_A, alg="RS256"),
        MALFORMED,
        id="duplicate-kid",
    ),
    pytest.param(lambda: rs256(raw_claims(sub='"admin","sub":"alice"')), MALFORMED, id="duplicate-sub"),
    pytest.param(
        lambda: rs256(raw_claims(roles='{"admin":true,"admin":false}')), MALFORMED, id="duplicate-nested-member"
    ),
    # 13. Malformed shapes.
    *(
        pytest.param(lambda t=t: t, MALFORMED, id=f"shape-{i}")
        for i, t in enumerate(["", ".", "..", "...", "a", "a.b", "a.b.c.d", "a.b.c.d.e.f"])
    ),
    pytest.param(lambda: "x." + rs256(), MALFORMED, id="shape-4-segments"),
    pytest.param(lambda: make_token("not json", claims(), RSA_A, alg="RS256"), MALFORMED, id="header-not-json"),
    pytest.param(lambda: make_token('["RS256"]', claims(), RSA_A, alg="RS256"), MALFORMED, id="header-array"),
    pytest.param(lambda: make_token('"RS256"', claims(), RSA_A, alg="RS256"), MALFORMED, id="header-string"),
    pytest.param(lambda: make_token("null", claims(), RSA_A, alg="RS256"), MALFORMED, id="header-null"),
    pytest.param(
        lambda: make_token(b"\xef\xbb\xbf" + json.dumps(header()).encode(), claims(), RSA_A, alg="RS256"),
        MALFORMED,
        id="header-utf8-bom",
    ),
    pytest.param(
        lambda: make_token(b'{"alg":"RS256","kid":"rsa-\xff"}', claims(), RSA_A, alg="RS256"),
        MALFORMED,
        id="header-invalid-utf8",
    ),
    pytest.param(
        lambda: make_token(b'{"alg":"RS256","kid":"rsa-\xed\xa0\x80"}', claims(), RSA_A, alg="RS256"),
        MALFORMED,
        id="header-encoded-surrogate",
    ),
    pytest.param(
        lambda: make_token('{"alg":"RS256","kid":"rsa-a","x":' + "{" * 1000, claims(), None, signature=b"s"),
        MALFORMED,
        id="header-1000-deep-unclosed",
    ),
    pytest.param(
        lambda: make_token('{"alg":"RS256","kid":"rsa-a","x":' + nested(1000) + "}", claims(), None, signature=b"s"),
        MALFORMED,
        id="header-1000-deep",
    ),
    pytest.param(
        lambda: make_token('{"alg":"RS256","kid":"rsa-a","x":' + nested(33) + "}", claims(), RSA_A, alg="RS256"),
        MALFORMED,
        id="header-33-deep",
    ),
    pytest.param(lambda: rs256(raw_claims(x=nested(1000))), MALFORMED, id="payload-1000-deep"),
    pytest.param(
        lambda: make_token('{"alg":"RS256","kid":"rsa-a","n":' + "9" * 5000 + "}", claims(), None, signature=b"s"),
        MALFORMED,
        id="header-5000-digit-int",
    ),
    pytest.param(lambda: rs256(raw_claims(name='"\\ud800"')), MALFORMED, id="payload-lone-surrogate"),
    pytest.param(lambda: rs256(raw_claims(tags='["\\udc00x"]')), MALFORMED, id="payload-lone-surrogate-in-list"),
    pytest.param(lambda: rs256(alg=["RS256"]), BAD_HEADER, id="alg-list"),
    pytest.param(lambda: rs256(alg={"RS256": 1}), BAD_HEADER, id="alg-object"),
    pytest.param(lambda: rs256(alg=None), BAD_HEADER, id="alg-null"),
    pytest.param(lambda: rs256(alg=DROP), BAD_HEADER, id="alg-missing"),
    pytest.param(lambda: rs256(alg="RS384"), ALG_NOT_ALLOWED, id="alg-not-in-issuer-allowlist"),
    pytest.param(lambda: rs256(alg="PS256"), ALG_NOT_ALLOWED, id="alg-pss"),
    pytest.param(lambda: rs256(alg="RSA-OAEP"), ALG_NOT_ALLOWED, id="alg-jwe-algorithm"),
    pytest.param(lambda: rs256("[]"), MALFORMED, id="payload-array"),
    pytest.param(lambda: rs256(""), MALFORMED, id="payload-empty"),
    pytest.param(lambda: rs256() + " ", MALFORMED, id="trailing-space"),
    pytest.param(lambda: " " + rs256(), MALFORMED, id="leading-space"),
    pytest.param(lambda: rs256().replace(".", "\u2024", 1), MALFORMED, id="non-ascii-dot"),
    # 14. Size: over `max_token_bytes` (8192) before any base64 or JSON work.
    pytest.param(lambda: rs256(claims(pad="p" * 8192)), TOO_LARGE, id="token-over-8kb"),
    pytest.param(lambda: "a" * 1_000_000, TOO_LARGE, id="garbage-1mb"),
    # 15. ECDSA signature shapes (CVE-2022-21449 and friends).
    pytest.param(lambda: es256(signature=bytes(64)), BAD_SIGNATURE, id="es256-r-s-zero"),
    pytest.param(lambda: es256(signature=P256_ORDER.to_bytes(32, "big") * 2), BAD_SIGNATURE, id="es256-r-s-n"),
    pytest.param(lambda: es256(signature=bytes(31) + b"\x01" + bytes(32)), BAD_SIGNATURE, id="es256-r-one-s-zero"),
    pytest.param(lambda: es256(signature=b"\x00" * 63), BAD_SIGNATURE, id="es256-63-bytes"),
    pytest.param(lambda: es256(signature=b"\x01" * 65), BAD_SIGNATURE, id="es256-65-bytes"),
    pytest.param(
        lambda: es256(signature=P256_ORDER.to_bytes(33, "big") * 2), BAD_SIGNATURE, id="es256-r-plus-n-33-bytes"
    ),
    pytest.param(lambda: es256(signature=der_es256()), BAD_SIGNATURE, id="es256-der-signature"),
    pytest.param(lambda: es256().rsplit(".", 1)[0] + ".", MALFORMED, id="es256-empty-signature"),
    pytest.param(lambda: rs256().rsplit(".", 1)[0] + ".", MALFORMED, id="rs256-empty-signature"),
    pytest.param(
        lambda: rs256().rsplit(".", 1)[0] + "." + b64url(bytes(256)), BAD_SIGNATURE, id="rs256-zero-signature"
    ),
]


def der_es256() -> bytes:
    # What `cryptography` returns before the JWS r||s conversion (RFC 7518 §3.4).
    return EC_1.sign(es256().rsplit(".", 1)[0].encode("ascii"), ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize(("make", "expected"), ATTACKS)
async def test_attack_is_rejected_with_its_error_and_a_fixed_message(make: Row, expected: AuthError) -> None:
    setup = rig()
    token = make()
    with pytest.raises(AuthError) as caught:
        await setup.verifier.verify(token)
    assert (type(caught.value), caught.value.message) == (type(expected), expected.message)
    assert caught.value.__cause__ is None
    message = str(caught.value)
    assert not any(len(part) >= 8 and part in message for part in token.split("."))


ACCEPTED: list[Any] = [
    pytest.param(lambda: jose_token(claims(), RSA_A, "RS256", "rsa-a"), id="rs256-made-by-python-jose"),
    pytest.param(lambda: jose_token(claims(), EC_1, "ES256", "ec-1"), id="es256-made-by-python-jose"),
    pytest.param(lambda: rs256(key=RSA_B, kid="rsa-b"), id="rs256-second-rsa-key"),
    pytest.param(lambda: rs256(claims(aud=["x", AUDIENCE])), id="aud-list-containing-ours"),
    pytest.param(lambda: rs256(typ=DROP), id="typ-absent"),
    *(pytest.param(lambda t=t: rs256(typ=t), id=f"typ-{t}") for t in ("JWT", "jwt", "at+jwt", "AT+JWT", "At+Jwt")),
    pytest.param(lambda: rs256(claims(exp=NOW + 300.5, iat=NOW - 0.25)), id="float-times"),
    pytest.param(lambda: rs256(claims(exp=NOW - 29)), id="exp-within-leeway"),
    pytest.param(lambda: rs256(claims(nbf=NOW + 30)), id="nbf-within-leeway"),
    pytest.param(lambda: rs256(claims(iat=NOW + 30)), id="iat-within-leeway"),
    pytest.param(lambda: rs256(claims(exp=10**30)), id="exp-far-future-int"),
    pytest.param(lambda: rs256(claims(name="\U0001f600 caf\u00e9")), id="non-ascii-claim"),
    pytest.param(lambda: rs256(raw_claims(name='"\\ud83d\\ude00"')), id="escaped-surrogate-pair"),
    pytest.param(lambda: rs256(raw_claims(x=nested(30))), id="payload-30-deep"),
    pytest.param(
        lambda: make_token('{ "alg" : "RS256",\n\t"kid" : "rsa-a" }', claims(), RSA_A, alg="RS256"),
        id="whitespace-in-header",
    ),
    pytest.param(lambda: rs256(x5t="dGh1bWJwcmludA", foo={"bar": [1]}), id="unknown-header-members"),
]


@pytest.mark.parametrize("make", ACCEPTED)
async def test_valid_token_is_accepted(make: Row) -> None:
    setup = rig()
    token = make()
    principal = await setup.verifier.verify(token)
    assert (principal.subject, principal.issuer, principal.token) == ("alice", ISSUER, token)
    assert principal.expires_at == float(parse_compact_jws(token, max_bytes=8192).claims["exp"])
    assert principal.source is None


@pytest.mark.parametrize(
    ("alg", "key", "kid"),
    [
        ("RS384", RSA_A, "rsa-a"),
        ("RS512", RSA_A, "rsa-a"),
        ("ES384", ec_private("384", "P-384"), "ec-384"),
        ("ES512", ec_private("521", "P-521"), "ec-521"),
    ],
    ids=["RS384", "RS512", "ES384", "ES512"],
)
async def test_other_allowed_algorithms_verify_when_the_issuer_lists_them(alg: str, key: Any, kid: str) -> None:
    jwks = [*JWKS, public_jwk(ec_private("384", "P-384"), "ec-384"), public_jwk(ec_private("521", "P-521"), "ec-521")]
    setup = rig(issuer_config(algorithms=(alg,)), source=StaticKeySource(jwks))
    assert (await setup.verifier.verify(jose_token(claims(), key, alg, kid))).subject == "alice"
    with pytest.raises(InvalidToken):
        await rig(source=StaticKeySource(jwks)).verifier.verify(jose_token(claims(), key, alg, kid))


def flip_unused_bits(segment: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3), "the segment must end in a partial group"
    return segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]


def _mutate(token: str, part: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[part] = change(parts[part])
    return ".".join(parts)


NON_CANONICAL: list[Any] = [
    pytest.param(lambda s: s + "=", 2, id="signature-padding-1"),
    pytest.param(lambda s: s + "==", 2, id="signature-padding-2"),
    pytest.param(lambda s: s + "====", 2, id="signature-padding-4"),
    pytest.param(lambda s: s.replace("-", "+").replace("_", "/"), 2, id="signature-standard-alphabet"),
    pytest.param(lambda s: s[:10] + "!!!!" + s[10:], 2, id="signature-bang-inserted"),
    pytest.param(lambda s: s[:10] + " " + s[10:], 2, id="signature-space"),
    pytest.param(lambda s: s[:10] + "\n" + s[10:], 2, id="signature-newline"),
    pytest.param(lambda s: s[:10] + "%2B" + s[10:], 2, id="signature-percent"),
    pytest.param(flip_unused_bits, 2, id="signature-trailing-bits"),
    pytest.param(lambda s: s + "=", 0, id="header-padding"),
    pytest.param(lambda s: " " + s, 0, id="header-space"),
    pytest.param(lambda s: s + "####", 0, id="header-hashes"),
    pytest.param(flip_unused_bits, 1, id="payload-trailing-bits"),
    pytest.param(lambda s: s + "==", 1, id="payload-padding"),
]


@pytest.mark.parametrize(("change", "part"), NON_CANONICAL)
async def test_non_canonical_base64_is_rejected_before_any_key_is_used(change: Callable[[str], str], part: int) -> None:
    # The `pad` whose payload ends in a partial base64 group, so it has trailing bits to flip.
    token = next(t for t in (rs256(claims(pad="a" * n)) for n in range(3)) if len(t.split(".")[1]) % 4)
    mutated = _mutate(token, part, change)
    assert mutated != token
    setup = rig()
    assert (await setup.verifier.verify(token)).subject == "alice"
    with pytest.raises(InvalidToken):
        parse_compact_jws(mutated, max_bytes=8192)
    with pytest.raises(InvalidToken):
        await rig().verifier.verify(mutated)


async def test_high_s_ecdsa_signature_verifies_and_only_adds_a_cache_entry() -> None:
    # ECDSA is malleable: (r, n-s) is valid too (J37). Nothing may be keyed on token bytes for
    # denial; the only token-keyed structure is the success cache, where a twin is harmless.
    setup = rig()
    token = es256()
    raw = parse_compact_jws(token, max_bytes=8192).signature
    s = int.from_bytes(raw[32:], "big")
    twin = token.rsplit(".", 1)[0] + "." + b64url(raw[:32] + (P256_ORDER - s).to_bytes(32, "big"))
    first, second = await setup.verifier.verify(token), await setup.verifier.verify(twin)
    assert first.subject == second.subject and first.token != second.token
    assert len(setup.verifier._cache) == 2


async def test_jku_x5u_and_embedded_keys_are_never_fetched() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json"
        setup = rig()
        hostile = [
            rs256(key=ATTACKER_RSA, jku=url),
            rs256(key=ATTACKER_RSA, x5u=url),
            rs256(key=ATTACKER_RSA, kid="attacker", jku=url),
            rs256(key=ATTACKER_RSA, jku=url, jwk=public_jwk(ATTACKER_RSA, "rsa-a")),
            make_token(header(alg="ES256", kid="attacker", jku=url), claims(), ATTACKER_EC),
        ]
        for token in hostile:
            with pytest.raises((InvalidToken, UnknownKey)):
                await setup.verifier.verify(token)
        # The IdP's own signature with a jku is accepted: the header is ignored, not followed.
        assert (await setup.verifier.verify(rs256(jku=url, x5u=url))).subject == "alice"
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert setup.source.calls == ["rsa-a", "rsa-a", "attacker", "rsa-a", "attacker", "rsa-a"]


async def test_hmac_never_verifies_even_if_config_validation_were_bypassed() -> None:
    # IssuerConfig refuses HS*; model_construct skips that, and the key still fits no HMAC.
    issuer = IssuerConfig.model_construct(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("RS256", "HS256"))
    auth = AuthConfig.model_construct(issuers=(issuer,))
    verifier = TokenVerifier(auth, {ISSUER: StaticKeySource(JWKS)}, clock=FakeClock())
    for secret in (public_pem(RSA_A), public_der(RSA_A), json.dumps(public_jwk(RSA_A, "rsa-a")).encode(), b""):
        with pytest.raises(InvalidToken):
            await verifier.verify(hs256(secret))


async def test_size_bound_is_exact_and_checked_before_the_key_source() -> None:
    token = rs256()
    assert (await rig(max_token_bytes=len(token)).verifier.verify(token)).subject == "alice"
    setup = rig(max_token_bytes=len(token) - 1)
    with pytest.raises(InvalidToken, match="too large"):
        await setup.verifier.verify(token)
    assert setup.source.calls == []


async def test_exp_is_required_even_when_required_claims_omit_it() -> None:
    setup = rig(issuer_config(required_claims=("sub",)))
    assert (await setup.verifier.verify(rs256(claims(iat=DROP)))).subject == "alice"
    with pytest.raises(InvalidClaims):
        await setup.verifier.verify(rs256(claims(exp=DROP)))


async def test_required_claims_from_config_are_enforced() -> None:
    setup = rig(issuer_config(required_claims=("exp", "sub", "jti")))
    with pytest.raises(InvalidClaims):
        await setup.verifier.verify(rs256())
    assert (await setup.verifier.verify(rs256(claims(jti="j-1")))).claims["jti"] == "j-1"


async def test_each_issuer_uses_only_its_own_keys() -> None:
    other = "https://other.example.com"
    mine, theirs = StaticKeySource(JWKS), StaticKeySource([public_jwk(ATTACKER_EC, "their-ec")])
    auth = auth_config(issuer_config(), issuer_config(other, algorithms=("ES256",), user_id_prefix="other:"))
    verifier = TokenVerifier(auth, {ISSUER: mine, other: theirs}, clock=FakeClock())
    theirs_token = make_token(header(alg="ES256", kid="their-ec"), claims(iss=other), ATTACKER_EC)
    assert (await verifier.verify(theirs_token)).issuer == other
    with pytest.raises(UnknownKey):  # our key, named in a token claiming the other issuer
        await verifier.verify(es256(claims(iss=other)))
    with pytest.raises(InvalidToken):  # RS256 is allowed for us, not for them
        await verifier.verify(rs256(claims(iss=other)))
    with pytest.raises(UnknownIssuer):
        await verifier.verify(rs256(claims(iss="https://third.example.com")))
    assert mine.calls == [] and theirs.calls == ["their-ec", "ec-1"]


def test_every_issuer_needs_a_key_source() -> None:
    with pytest.raises(ValueError, match="no key source"):
        TokenVerifier(auth_config(), {})


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UnknownKey(), UnknownKey),
        (RuntimeError("stale key set for eyJhbGciOi"), InvalidToken),
        (OSError("connection refused"), InvalidToken),
        (TypeError("unhashable"), InvalidToken),
        (RecursionError(), InvalidToken),
    ],
    ids=["unknown-key-passes-through", "runtime-error", "os-error", "type-error", "recursion-error"],
)
async def test_key_source_failures_become_auth_errors(error: Exception, expected: type[AuthError]) -> None:
    setup = rig(source=StaticKeySource(JWKS, error=error))
    with pytest.raises(AuthError) as caught:
        await setup.verifier.verify(rs256())
    assert type(caught.value) is expected
    assert "eyJ" not in str(caught.value) and caught.value.__cause__ is None


async def test_cancellation_propagates_and_is_not_turned_into_an_auth_error() -> None:
    # A client disconnect cancels the request mid-fetch; `except Exception` must not swallow it.
    setup = rig(source=StaticKeySource(JWKS, error=asyncio.CancelledError()))
    with pytest.raises(asyncio.CancelledError):
        await setup.verifier.verify(rs256())


async def test_mixed_rsa_and_ec_key_set_verifies_both_kinds_in_any_order() -> None:
    for jwks in (JWKS, JWKS[::-1]):
        setup = rig(source=StaticKeySource(jwks))
        assert (await setup.verifier.verify(rs256())).subject == "alice"
        assert (await setup.verifier.verify(es256())).subject == "alice"


async def test_key_stating_another_alg_does_not_verify() -> None:
    source = StaticKeySource([public_jwk(RSA_A, "rsa-a", alg="RS512")])
    with pytest.raises(InvalidToken):
        await rig(issuer_config(algorithms=("RS256", "RS512")), source=source).verifier.verify(rs256())


# The verified-token cache.


async def test_cache_hit_returns_the_same_principal_without_asking_the_key_source() -> None:
    setup = rig()
    token = rs256()
    first = await setup.verifier.verify(token)
    assert await setup.verifier.verify(token) is first
    assert setup.source.calls == ["rsa-a"]


async def test_cache_hit_honours_expiry_on_the_clock() -> None:
    setup = rig()
    token = rs256(claims(exp=NOW + 100))
    await setup.verifier.verify(token)
    setup.clock.advance(99)
    await setup.verifier.verify(token)
    assert setup.source.calls == ["rsa-a"]
    setup.clock.now += 32  # wall clock only: exp + leeway passed, the monotonic deadline did not
    with pytest.raises(TokenExpired):
        await setup.verifier.verify(token)


async def test_cache_entry_lives_at_most_token_cache_seconds() -> None:
    setup = rig(token_cache_seconds=60.0)
    token = rs256(claims(exp=NOW + 3600))
    await setup.verifier.verify(token)
    setup.clock.advance(59)
    await setup.verifier.verify(token)
    setup.clock.advance(2)
    await setup.verifier.verify(token)
    assert setup.source.calls == ["rsa-a", "rsa-a"]


async def test_token_inside_leeway_after_exp_is_verified_again_not_served_from_cache() -> None:
    setup = rig()
    token = rs256(claims(exp=NOW + 10))
    await setup.verifier.verify(token)
    setup.clock.advance(20)  # past exp, inside the 30 s leeway
    await setup.verifier.verify(token)
    assert setup.source.calls == ["rsa-a", "rsa-a"]
    assert len(setup.verifier._cache) == 0


async def test_cache_is_keyed_by_sha256_digest_never_the_token() -> None:
    setup = rig()
    tokens = [rs256(claims(sub=f"user-{i}")) for i in range(3)]
    for token in tokens:
        await setup.verifier.verify(token)
    keys: list[object] = list(setup.verifier._cache._entries)
    assert keys == [sha256(token) for token in tokens]
    assert all(isinstance(key, bytes) and len(key) == 32 for key in keys)
    assert not any(token in keys or token.encode() in keys for token in tokens)


async def test_failures_are_not_cached_and_garbage_does_not_grow_the_cache() -> None:
    setup = rig()
    forged = rs256(key=RSA_B)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await setup.verifier.verify(forged)
    for i in range(1000):
        with pytest.raises(AuthError):
            await setup.verifier.verify(f"garbage.{i}.x")
    assert setup.source.calls == ["rsa-a", "rsa-a"] and len(setup.verifier._cache) == 0


async def test_cache_is_bounded_by_token_cache_size_and_zero_disables_it() -> None:
    setup = rig(token_cache_size=3)
    for i in range(10):
        await setup.verifier.verify(rs256(claims(sub=f"user-{i}")))
    assert len(setup.verifier._cache) == 3
    off = rig(token_cache_size=0)
    token = rs256()
    await off.verifier.verify(token)
    await off.verifier.verify(token)
    assert off.source.calls == ["rsa-a", "rsa-a"] and len(off.verifier._cache) == 0


def test_cache_hit_costs_under_5_microseconds() -> None:
    setup = rig()
    token = jose_token(claims(email="alice@example.com", scope="openid profile"), RSA_A, "RS256", "rsa-a")
    first = run_now(setup.verifier.verify(token))
    runs = timeit.repeat(lambda: run_now(setup.verifier.verify(token)), number=20_000, repeat=5)
    assert run_now(setup.verifier.verify(token)) is first and setup.source.calls == ["rsa-a"]
    assert min(runs) / 20_000 < 5e-6  # measured ~1.5 us: digest, dict lookup, two clock reads


# The principal.


async def test_principal_never_prints_its_token_and_its_claims_are_read_only() -> None:
    token = rs256(claims(roles=["admin"]))
    principal = await rig().verifier.verify(token)
    for text in (repr(principal), str(principal)):
        assert token not in text and token.split(".")[2] not in text and "alice" in text
    with pytest.raises(TypeError):
        principal.claims["sub"] = "mallory"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.subject = "mallory"  # type: ignore[misc]


async def test_principal_source_is_set_later_with_replace() -> None:
    setup = rig()
    principal = await setup.verifier.verify(rs256())
    from_cookie = dataclasses.replace(principal, source="cookie")
    assert from_cookie.source == "cookie" and principal.source is None
    assert (from_cookie.subject, from_cookie.token, from_cookie.claims) == (
        principal.subject,
        principal.token,
        principal.claims,
    )
    assert isinstance(from_cookie, Principal) and from_cookie != principal


async def test_a_cached_token_keeps_one_principal_per_source_and_a_new_one_once_verified_again() -> None:
    setup = rig(token_cache_seconds=60.0)
    token = rs256()
    verified = await setup.verifier.verify(token)
    bearer = verified.with_source("bearer")
    assert bearer.source == "bearer" and verified.source is None
    assert (await setup.verifier.verify(token)).with_source("bearer") is bearer  # made once per cached token
    cookie = verified.with_source("cookie")
    assert cookie.source == "cookie" and cookie is not bearer and bearer.source == "bearer"
    other = await setup.verifier.verify(rs256(claims(sub="bob")))
    assert other.with_source("bearer").subject == "bob" and bearer.subject == "alice"
    setup.clock.advance(61)  # the cache entry is gone: a verification again, and new copies
    again = await setup.verifier.verify(token)
    assert again is not verified and again.with_source("bearer") is not bearer
    assert again.with_source("bearer") == bearer  # the same claims, the same principal
