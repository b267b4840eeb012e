"""The one place the gateway signs: its keys, the JWKS that publishes them, and compact JWS.

python-jose stays the door for *verifying* (`auth/jose.py`); signing uses `cryptography` directly,
so that everything a signature needs is made once per key at start-up and a token costs one
`json` encoding, two base64 encodings and one private-key operation:

- EC P-256 keys sign ES256 (RFC 7518 §3.4), ~40 µs a token; RSA keys of 2048 bits or more sign
  RS256 (§3.3), ~300 µs (hence the recommendation for EC). Anything else is refused at start-up
  with the file named, never at the first request.
- `kid` is the key's RFC 7638 SHA-256 thumbprint, so a verifier's cache can never confuse a
  rotated key with its predecessor, and the same key file always publishes the same `kid`.
- The protected header (`alg`, `kid`, `typ`) is serialised and encoded once per key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["KeyRefused", "PublishedKeys", "SigningKey", "b64url", "load_key_file", "load_signing_key"]

Algorithm = Literal["ES256", "RS256"]
MIN_RSA_BITS = 2048
# A bound on the cost of one signature (an 8192-bit RSA signature takes ~20 ms).
MAX_RSA_BITS = 4096
_EC_SIGNATURE = ec.ECDSA(hashes.SHA256())
_RSA_PADDING = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class KeyRefused(ValueError):
    """A key file that cannot sign the gateway's tokens; the message names the file, never key material."""


def b64url(data: bytes) -> bytes:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _uint(value: int, length: int) -> str:
    return b64url(value.to_bytes(length, "big")).decode("ascii")


def _thumbprint(required: Mapping[str, str]) -> str:
    # RFC 7638 §3: the required members only, in lexicographic order, no whitespace.
    canonical = json.dumps(dict(sorted(required.items())), separators=(",", ":")).encode("utf-8")
    return b64url(hashlib.sha256(canonical).digest()).decode("ascii")


PublicKeyType = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _public_jwk(public: PublicKeyType) -> tuple[dict[str, str], Algorithm]:
    """The public JWK members of a key (RFC 7518 §6) and the one algorithm it is used with."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        numbers = public.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": _uint(numbers.x, 32), "y": _uint(numbers.y, 32)}
        return jwk, "ES256"
    rsa_numbers = public.public_numbers()
    # RFC 7518 §6.3.1: unsigned big-endian, the minimum number of octets.
    n, e = rsa_numbers.n, rsa_numbers.e
    return {"kty": "RSA", "n": _uint(n, (n.bit_length() + 7) // 8), "e": _uint(e, (e.bit_length() + 7) // 8)}, "RS256"


def _check_key(key: object, where: str) -> PublicKeyType:
    """The public half of an acceptable key, or `KeyRefused` naming `where`."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP256R1):
            raise KeyRefused(f"{where}: an EC key on {public.curve.name} cannot sign; use P-256 (ES256)")
        return public
    if isinstance(public, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= public.key_size <= MAX_RSA_BITS:
            raise KeyRefused(f"{where}: an RSA key of {public.key_size} bits cannot sign; use 2048 to 4096 bits")
        return public
    raise KeyRefused(f"{where}: only EC P-256 (ES256) and RSA (RS256) keys can sign")


def _read(path: str, where: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyRefused(f"{where}: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class SigningKey:
    """A private key ready to sign: its `kid`, algorithm, public JWK and encoded header, made once."""

    kid: str
    alg: Algorithm
    jwk: Mapping[str, str]
    _private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(repr=False)
    _header: bytes = field(repr=False)

    def sign(self, claims: Mapping[str, Any]) -> str:
        """The compact JWS (RFC 7515 §7.1) of `claims`, a JWT any stock library verifies."""
        signing_input = self._header + b64url(orjson.dumps(claims))
        private = self._private
        if isinstance(private, ec.EllipticCurvePrivateKey):
            # JWS wants r || s, 32 bytes each (RFC 7518 §3.4), not cryptography's DER.
            r, s = decode_dss_signature(private.sign(signing_input, _EC_SIGNATURE))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = private.sign(signing_input, _RSA_PADDING, _SHA256)
        return (signing_input + b"." + b64url(signature)).decode("ascii")


def _published(public: PublicKeyType) -> dict[str, str]:
    jwk, alg = _public_jwk(public)
    kid = _thumbprint(jwk)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def load_signing_key(path: str, where: str = "tokens.signing_key_file") -> SigningKey:
    """The private key in the PEM file `path`, ready to sign; `KeyRefused` naming `where` otherwise."""
    data = _read(path, where)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # TypeError: an encrypted key. The library's messages are not quoted (they may describe the key).
        raise KeyRefused(f"{where}: {path} is not an unencrypted PEM private key") from None
    public = _check_key(private, where)
    assert isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    jwk = _published(public)
    header = {"alg": jwk["alg"], "kid": jwk["kid"], "typ": "JWT"}
    key = SigningKey(
        kid=jwk["kid"],
        alg="ES256" if jwk["alg"] == "ES256" else "RS256",
        jwk=jwk,
        _private=private,
        _header=b64url(orjson.dumps(header)) + b".",
    )
    # OpenSSL prepares a key's tables on first use: once here, not in the first user's request.
    key.sign({"warm": "up"})
    return key


def load_key_file(path: str, where: str) -> dict[str, str]:
    """The published JWK of a previous key: a PEM private key (the old signing key) or public key."""
    data = _read(path, where)
    key: object
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise KeyRefused(f"{where}: {path} is not an unencrypted PEM private or public key") from None
    return _published(_check_key(key, where))


@dataclass(frozen=True)
class PublishedKeys:
    """The JWKS document (current key first, then previous ones), encoded once."""

    keys: tuple[Mapping[str, str], ...]
    document: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "document", orjson.dumps({"keys": list(self.keys)}))

    @classmethod
    def of(cls, current: SigningKey, previous: Sequence[Mapping[str, str]]) -> PublishedKeys:
        keys: list[Mapping[str, str]] = [current.jwk]
        for jwk in previous:
            if all(jwk["kid"] != seen["kid"] for seen in keys):
                keys.append(jwk)
        return cls(tuple(keys))
