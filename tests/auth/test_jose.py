"""The python-jose boundary: which JWKs become keys, which algorithms each key fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jose.backends
import pytest
from jose.backends.cryptography_backend import CryptographyECKey

from gateway.auth import jose as gateway_jose
from gateway.auth.jose import UnusableKey, build_key, check_backend, key_fits, verify_signature
from tests.support.keys import b64url, ec_private, public_jwk, rsa_private, sign

RSA, EC = rsa_private("a"), ec_private("1")
RSA_JWK, EC_JWK = public_jwk(RSA, "rsa-a"), public_jwk(EC, "ec-1")


def changed(jwk: dict[str, Any], **changes: Any) -> dict[str, Any]:
    values = {**jwk, **changes}
    return {name: value for name, value in values.items() if value is not None}


@pytest.mark.parametrize(
    ("jwk", "algorithms"),
    [
        (RSA_JWK, {"RS256", "RS384", "RS512"}),
        (changed(RSA_JWK, alg="RS384"), {"RS384"}),
        (changed(RSA_JWK, use=None), {"RS256", "RS384", "RS512"}),
        (changed(RSA_JWK, key_ops=["verify"]), {"RS256", "RS384", "RS512"}),
        (changed(RSA_JWK, x5t="dGh1bWI", ext=True), {"RS256", "RS384", "RS512"}),
        (EC_JWK, {"ES256"}),
        (changed(EC_JWK, alg="ES256"), {"ES256"}),
        (public_jwk(ec_private("384", "P-384"), "ec-384"), {"ES384"}),
        (public_jwk(ec_private("521", "P-521"), "ec-521"), {"ES512"}),
    ],
    ids=[
        "rsa",
        "rsa-stated-alg",
        "rsa-no-use",
        "rsa-key-ops-verify",
        "rsa-extra-members",
        "p256",
        "p256-stated-alg",
        "p384",
        "p521",
    ],
)
def test_usable_keys_fit_exactly_their_algorithms(jwk: dict[str, Any], algorithms: set[str]) -> None:
    key = build_key(jwk)
    assert key.algorithms == algorithms
    assert (key.kid, key.kty, key.use, key.alg) == (jwk["kid"], jwk["kty"], jwk.get("use"), jwk.get("alg"))
    for alg in ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "HS256", "none"):
        assert key_fits(key, alg) == (alg in algorithms)


NOT_ON_CURVE = changed(EC_JWK, y=EC_JWK["x"])

UNUSABLE: list[Any] = [
    pytest.param({"kty": "oct", "kid": "k", "k": "c2VjcmV0"}, id="oct"),
    pytest.param({"kty": "oct", "kid": "k", "k": ""}, id="oct-empty-secret"),
    pytest.param(
        {"kty": "OKP", "kid": "k", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}, id="okp"
    ),
    pytest.param(changed(RSA_JWK, kty=None), id="no-kty"),
    pytest.param(changed(RSA_JWK, kty="rsa"), id="kty-lowercase"),
    pytest.param(changed(RSA_JWK, d="AQAB"), id="rsa-private-d"),
    pytest.param(changed(RSA_JWK, p="AQAB", q="AQAB"), id="rsa-private-primes"),
    pytest.param(changed(EC_JWK, d="AQAB"), id="ec-private-d"),
    pytest.param(changed(RSA_JWK, kid=None), id="no-kid"),
    pytest.param(changed(RSA_JWK, kid=""), id="empty-kid"),
    pytest.param(changed(RSA_JWK, kid=7), id="numeric-kid"),
    pytest.param(changed(RSA_JWK, use="enc"), id="use-enc"),
    pytest.param(changed(RSA_JWK, use=["sig"]), id="use-list"),
    pytest.param(changed(RSA_JWK, key_ops=["encrypt"]), id="key-ops-encrypt"),
    pytest.param(changed(RSA_JWK, key_ops="verify"), id="key-ops-string"),
    pytest.param(changed(RSA_JWK, alg="HS256"), id="rsa-alg-hs256"),
    pytest.param(changed(RSA_JWK, alg="PS256"), id="rsa-alg-ps256"),
    pytest.param(changed(RSA_JWK, alg="RSA-OAEP"), id="rsa-alg-oaep"),
    pytest.param(changed(RSA_JWK, alg="ES256"), id="rsa-alg-es256"),
    pytest.param(changed(RSA_JWK, alg=["RS256"]), id="alg-list"),
    pytest.param(changed(EC_JWK, alg="ES384"), id="p256-alg-es384"),
    pytest.param(changed(EC_JWK, alg="ES521"), id="ec-alg-es521"),
    pytest.param(public_jwk(rsa_private("small", 1024), "small"), id="rsa-1024-bits"),
    pytest.param(changed(RSA_JWK, n=RSA_JWK["n"] + "=="), id="rsa-n-padded"),
    pytest.param(changed(RSA_JWK, n=RSA_JWK["n"].replace("-", "+").replace("_", "/")), id="rsa-n-standard-alphabet"),
    pytest.param(changed(RSA_JWK, e=None), id="rsa-no-e"),
    pytest.param(changed(RSA_JWK, e=65537), id="rsa-e-number"),
    pytest.param(changed(RSA_JWK, e="AA"), id="rsa-e-zero"),
    pytest.param(changed(EC_JWK, crv="secp256k1"), id="ec-unknown-curve"),
    pytest.param(changed(EC_JWK, crv=None), id="ec-no-curve"),
    pytest.param(changed(EC_JWK, x=b64url(bytes(33))), id="ec-x-too-long"),
    pytest.param(NOT_ON_CURVE, id="ec-point-not-on-curve"),
    pytest.param(changed(EC_JWK, x="", y=""), id="ec-empty-coordinates"),
    pytest.param(["kty", "RSA"], id="not-a-mapping"),
]


@pytest.mark.parametrize("jwk", UNUSABLE)
def test_unusable_jwk_is_refused_with_a_fixed_message(jwk: Any) -> None:
    with pytest.raises(UnusableKey) as caught:
        build_key(jwk)
    assert caught.value.__cause__ is None
    secrets = [v for v in (jwk.values() if isinstance(jwk, dict) else ()) if isinstance(v, str) and len(v) > 16]
    assert not any(secret in str(caught.value) for secret in secrets)


def test_verify_signature_is_true_only_for_a_good_signature_with_a_fitting_alg() -> None:
    key, message = build_key(RSA_JWK), b"header.payload"
    good = sign("RS256", message, RSA)
    assert verify_signature(key, "RS256", message, good) is True
    assert verify_signature(key, "RS512", message, good) is False
    assert verify_signature(key, "HS256", message, good) is False
    assert verify_signature(key, "RS256", message + b"x", good) is False
    assert verify_signature(key, "RS256", message, good[:-1]) is False
    assert verify_signature(key, "RS256", message, b"") is False
    ec_key = build_key(EC_JWK)
    assert verify_signature(ec_key, "ES256", message, sign("ES256", message, EC)) is True
    assert verify_signature(ec_key, "ES256", message, bytes(64)) is False  # CVE-2022-21449


def test_verify_signature_turns_jose_exceptions_into_false() -> None:
    key = build_key(RSA_JWK)
    assert verify_signature(key, "RS256", "not bytes", b"sig") is False  # type: ignore[arg-type]
    assert verify_signature(key, "RS256", b"m", None) is False  # type: ignore[arg-type]


def test_public_key_repr_shows_no_key_objects() -> None:
    text = repr(build_key(RSA_JWK))
    assert "kid='rsa-a'" in text and "Cryptography" not in text and "_verifiers" not in text


def test_check_backend_accepts_the_cryptography_backend() -> None:
    check_backend()


def test_check_backend_fails_when_python_jose_fell_back_to_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jose.backends, "ECKey", object)
    with pytest.raises(RuntimeError, match="cryptography"):
        check_backend()


def test_check_backend_self_test_catches_a_verify_that_accepts_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CryptographyECKey, "verify", lambda self, msg, sig: True)
    with pytest.raises(RuntimeError, match="self-test"):
        check_backend()


def test_only_gateway_auth_jose_imports_python_jose() -> None:
    package = Path(gateway_jose.__file__).resolve().parents[1]
    importers = sorted(
        str(path.relative_to(package.parent))
        for path in package.rglob("*.py")
        if any(line.startswith(("import jose", "from jose")) for line in path.read_text(encoding="utf-8").splitlines())
    )
    assert importers == ["gateway/auth/jose.py"]


def test_thumbprint_matches_rfc_7638_and_equality_means_the_same_key_material() -> None:
    rfc_7638_example = {
        "kty": "RSA",
        "kid": "2011-04-29",
        "e": "AQAB",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWK"
            "RXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMic"
            "AtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3"
            "XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
    }
    assert build_key(rfc_7638_example).thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert build_key(RSA_JWK) == build_key(dict(RSA_JWK))
    assert build_key(RSA_JWK) != build_key(public_jwk(rsa_private("rotated"), "rsa-a"))
