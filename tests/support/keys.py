"""Test keys, JWK export, and a raw signer that signs anything, hostile tokens included.

`make_token` builds tokens byte by byte with `cryptography` (python-jose refuses to build most
attack tokens); `jose_token` builds ordinary ones with python-jose, the library an IdP test double
would use. Keys are generated once per process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Coroutine, Iterable, Mapping
from functools import cache
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from jose import jwt as jose_jwt

from gateway.auth.jose import PublicKey, build_key
from gateway.config import AuthConfig, IssuerConfig
from tests.support.clock import NOW

__all__ = [
    "AUDIENCE",
    "DROP",
    "ISSUER",
    "NOW",
    "PrivateKey",
    "StaticKeySource",
    "auth_config",
    "b64url",
    "claims",
    "ec_private",
    "issuer_config",
    "jose_token",
    "make_token",
    "public_der",
    "public_jwk",
    "public_openssh",
    "public_pem",
    "rsa_private",
    "run_now",
    "sha256",
    "sign",
]

ISSUER = "https://idp.example.com"
AUDIENCE = "chatkit-gateway"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_T = TypeVar("_T")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@cache
def rsa_private(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key per `name`, the same one for the whole run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ec_private(name: str, crv: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVES[crv])


def public_jwk(private: PrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of `private` as an IdP publishes it (RFC 7518 §6)."""
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.public_key().public_numbers()
        jwk: dict[str, Any] = {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    else:
        point = private.public_key().public_numbers()
        size = (private.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[private.curve.name]
        jwk = {"kty": "EC", "crv": crv, "x": _uint(point.x, size), "y": _uint(point.y, size)}
    jwk.update(kid=kid, use="sig", **extra)
    return jwk


def _uint(value: int, size: int | None = None) -> str:
    return b64url(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


def sign(alg: str, signing_input: bytes, key: PrivateKey | bytes | None) -> bytes:
    """A raw JWS signature for any `alg`, including ones the gateway must refuse."""
    if key is None or alg.lower() == "none":
        return b""
    digest = _HASHES[alg[2:]]()
    if isinstance(key, bytes):  # HMAC with whatever secret the attack needs, empty included
        return hmac.new(key, signing_input, alg.replace("HS", "sha")).digest()
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, padding.PKCS1v15(), digest)
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _json(value: Mapping[str, Any] | bytes | str) -> bytes:
    # Raw text passes through unchanged: duplicates, NaN or deep nesting need hand-written JSON.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def make_token(
    header: Mapping[str, Any] | bytes | str,
    payload: Mapping[str, Any] | bytes | str,
    key: PrivateKey | bytes | None,
    *,
    alg: str | None = None,
    signature: bytes | None = None,
) -> str:
    """A compact JWS signed raw: `alg` defaults to the header's, `signature` overrides signing."""
    head, body = b64url(_json(header)), b64url(_json(payload))
    if signature is None:
        name = alg if alg is not None else (header.get("alg") if isinstance(header, Mapping) else None)
        signature = sign(str(name), f"{head}.{body}".encode("ascii"), key)
    return f"{head}.{body}.{b64url(signature)}"


def jose_token(payload: Mapping[str, Any], key: PrivateKey, alg: str, kid: str, **headers: Any) -> str:
    """An ordinary token made by python-jose itself."""
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    token: str = jose_jwt.encode(dict(payload), pem.decode("ascii"), algorithm=alg, headers={"kid": kid, **headers})
    return token


def claims(**changes: Any) -> dict[str, Any]:
    """A valid claims set at `NOW`; a change to `DROP` removes the claim."""
    values: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": NOW - 10, "exp": NOW + 300}
    for name, value in changes.items():
        if value is DROP:
            values.pop(name, None)
        else:
            values[name] = value
    return values


DROP = object()


def public_pem(private: PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def public_der(private: PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def public_openssh(private: PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)


def auth_config(*issuers: IssuerConfig, **settings: Any) -> AuthConfig:
    if not issuers:
        issuers = (issuer_config(),)
    return AuthConfig(issuers=issuers, **settings)


def issuer_config(issuer: str = ISSUER, **settings: Any) -> IssuerConfig:
    values: dict[str, Any] = {"audiences": (AUDIENCE,), "algorithms": ("RS256", "ES256")}
    values.update(settings)
    return IssuerConfig(issuer=issuer, **values)


class StaticKeySource:
    """An in-memory `KeySource` that records every kid asked for."""

    def __init__(self, jwks: Iterable[Mapping[str, Any]] = (), *, error: BaseException | None = None) -> None:
        self.keys: dict[str, PublicKey] = {}
        for jwk in jwks:
            key = build_key(jwk)
            self.keys[key.kid] = key
        self.error = error
        self.calls: list[str] = []

    async def get_key(self, kid: str) -> PublicKey | None:
        self.calls.append(kid)
        if self.error is not None:
            raise self.error
        return self.keys.get(kid)


def run_now(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (a cache hit, a static key source) without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: _T = done.value
        return result
    coro.close()
    raise RuntimeError("the coroutine suspended")


def sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()
