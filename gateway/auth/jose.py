"""The one door to python-jose: JWKs become prebuilt public keys, signatures become `bool`.

python-jose 3.5.0 is kept for one primitive only, `Key.verify` on a key object built once per JWKS
refresh. What it does loosely is done here instead (docs/jwt-attacks.md, "python-jose 3.5.0"):

- `jwt.decode` ignores `kid`, `use`, `key_ops` and the JWK's own `alg`, tries every key of a JWKS
  and aborts on a key of another type, so it is never called: the caller picks the key by `kid`
  and `key_fits` pins each key to the algorithms it was built for (RFC 8725 §3.1).
- HMAC is never built: an oct JWK (or an empty secret, CVE-2026-120459) cannot become a key here.
- `base64_to_long` decodes leniently, so JWK members are decoded strictly before jose sees them.
- jose raises `JWKError`, `TypeError`, `ValueError`...: building maps them to `UnusableKey`,
  verifying maps them to `False`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

import jose.backends as jose_backends
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose.backends.cryptography_backend import CryptographyECKey, CryptographyRSAKey

__all__ = [
    "EC_ALGORITHMS",
    "RSA_ALGORITHMS",
    "PublicKey",
    "UnusableKey",
    "build_key",
    "check_backend",
    "key_fits",
    "verify_signature",
]

RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
# RFC 7518 §3.4: each ES algorithm names its curve, so an EC key fits exactly one of them.
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
# RFC 7518 §3.3: RSA keys of 2048 bits or more. The ceiling bounds the cost of one verify.
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# RFC 7517 §9.2 / RFC 7518 §6: members that only a private or symmetric key has.
_SECRET_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class UnusableKey(ValueError):
    """A JWK that cannot verify tokens. The message is fixed text, never key material."""


class _Verifier(Protocol):
    def verify(self, msg: bytes, sig: bytes) -> object: ...


@dataclass(frozen=True)
class PublicKey:
    """A validated public JWK with its python-jose key objects built once, one per algorithm."""

    kid: str
    kty: Literal["RSA", "EC"]
    crv: str | None
    alg: str | None
    use: str | None
    # RFC 7638 SHA-256 thumbprint: names the key material in logs and makes equality mean "same key"
    # (a rotated key that reuses a kid compares unequal).
    thumbprint: str
    _verifiers: Mapping[str, _Verifier] = field(default_factory=dict, repr=False, compare=False)

    @property
    def algorithms(self) -> frozenset[str]:
        """The JWS algorithms this key may verify."""
        return frozenset(self._verifiers)


def build_key(jwk: Mapping[str, Any]) -> PublicKey:
    """Validate one JWK of a key set and prebuild its verifiers; raise `UnusableKey` otherwise."""
    try:
        return _build_key(jwk)
    except UnusableKey:
        raise
    except Exception:
        # jose's JWKError and cryptography's ValueError (point not on the curve, even modulus...)
        # may quote the key; the message stays fixed and the chain is dropped.
        raise UnusableKey("the JWK cannot be loaded") from None


def key_fits(key: PublicKey, alg: str) -> bool:
    """Whether `key` was built for `alg`: one key, its own algorithms (RFC 8725 §2.1, §3.1)."""
    return alg in key._verifiers


def verify_signature(key: PublicKey, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """Check a JWS signature with the prebuilt key; any failure or exception is `False`."""
    verifier = key._verifiers.get(alg)
    if verifier is None:
        return False
    try:
        return verifier.verify(signing_input, signature) is True
    except Exception:
        # CryptographyRSAKey.verify lets everything but InvalidSignature escape.
        return False


def check_backend() -> None:
    """Fail start-up unless python-jose verifies with `cryptography`.

    jose.backends falls back to python-rsa/python-ecdsa without a word when its cryptography
    import fails, and ES256 becomes a CPU amplifier (docs/BENCHMARKS.md, "Measured design choices").
    """
    if jose_backends.RSAKey is not CryptographyRSAKey or jose_backends.ECKey is not CryptographyECKey:
        raise RuntimeError("python-jose is not using the 'cryptography' backend; install python-jose[cryptography]")
    # A self-test of the one primitive we use: a good signature passes, r = s = 0 fails (CVE-2022-21449).
    private = ec.generate_private_key(ec.SECP256R1())
    verifier = CryptographyECKey(private.public_key(), "ES256")
    signature = CryptographyECKey(private, "ES256").sign(b"check")
    if verifier.verify(b"check", signature) is not True or verifier.verify(b"check", bytes(64)) is not False:
        raise RuntimeError("python-jose ES256 verification failed its self-test")


def _build_key(jwk: Mapping[str, Any]) -> PublicKey:
    if not isinstance(jwk, Mapping):
        raise UnusableKey("a JWK must be a JSON object")
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        # oct keys would turn the IdP's key set into HMAC secrets (RFC 8725 §2.1; jwt-attacks.md J02-J05).
        raise UnusableKey("only RSA and EC public keys are accepted")
    if _SECRET_MEMBERS & jwk.keys():
        raise UnusableKey("a JWK with private members is refused")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise UnusableKey("a JWK needs a non-empty string kid")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise UnusableKey("a JWK whose use is not 'sig' cannot verify tokens")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise UnusableKey("a JWK whose key_ops lack 'verify' cannot verify tokens")
    alg = jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise UnusableKey("a JWK alg must be a string")
    if kty == "RSA":
        return _build_rsa(jwk, kid, alg, use)
    return _build_ec(jwk, kid, alg, use)


def _build_rsa(jwk: Mapping[str, Any], kid: str, alg: str | None, use: str | None) -> PublicKey:
    algorithms = _stated_or(alg, RSA_ALGORITHMS)
    public = rsa.RSAPublicNumbers(_member_int(jwk, "e"), _member_int(jwk, "n")).public_key()
    if not MIN_RSA_BITS <= public.key_size <= MAX_RSA_BITS:
        raise UnusableKey("an RSA key must have 2048 to 8192 bits")
    verifiers = _prebuild(algorithms, lambda a: CryptographyRSAKey(public, a), (public.key_size + 7) // 8)
    thumbprint = _thumbprint({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]})
    return PublicKey(kid=kid, kty="RSA", crv=None, alg=alg, use=use, thumbprint=thumbprint, _verifiers=verifiers)


def _build_ec(jwk: Mapping[str, Any], kid: str, alg: str | None, use: str | None) -> PublicKey:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _CURVES:
        raise UnusableKey("an EC key must be on P-256, P-384 or P-521")
    curve, size = _CURVES[crv]
    algorithms = _stated_or(alg, (EC_ALGORITHMS[crv],))
    x, y = _member_bytes(jwk, "x"), _member_bytes(jwk, "y")
    if len(x) > size or len(y) > size:
        raise UnusableKey("an EC coordinate is longer than its curve")
    # cryptography checks that the point lies on the curve (RFC 8725 §3.4, invalid-curve attacks).
    numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve())
    public = numbers.public_key()
    verifiers = _prebuild(algorithms, lambda a: CryptographyECKey(public, a), 2 * size)
    thumbprint = _thumbprint({"crv": crv, "kty": "EC", "x": jwk["x"], "y": jwk["y"]})
    return PublicKey(kid=kid, kty="EC", crv=crv, alg=alg, use=use, thumbprint=thumbprint, _verifiers=verifiers)


def _stated_or(alg: str | None, fitting: tuple[str, ...]) -> tuple[str, ...]:
    # A JWK that states its `alg` is used with that algorithm only (RFC 7517 §4.4; jwt-attacks.md J45).
    if alg is None:
        return fitting
    if alg not in fitting:
        raise UnusableKey("the JWK's alg does not fit its key type")
    return (alg,)


def _prebuild(
    algorithms: tuple[str, ...], make: Callable[[str], Any], signature_length: int
) -> Mapping[str, _Verifier]:
    verifiers: dict[str, _Verifier] = {alg: make(alg) for alg in algorithms}
    for verifier in verifiers.values():
        # OpenSSL computes a key's Montgomery tables on its first use; a check that fails on
        # purpose (a full-length signature, so the arithmetic runs) does it here, when the JWKS
        # is loaded, not in the first user's request (docs/BENCHMARKS.md, "Measured design choices").
        try:
            verifier.verify(b"warm-up", b"\x01" * signature_length)
        except Exception:
            pass
    return MappingProxyType(verifiers)


def _member_bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    # RFC 7518 §6: base64url without padding. Decoded strictly, unlike jose's base64_to_long.
    value = jwk.get(name)
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise UnusableKey("a JWK member is not base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:
        raise UnusableKey("a JWK member is not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != value.encode("ascii"):
        raise UnusableKey("a JWK member is not canonical base64url")
    return raw


def _thumbprint(required: Mapping[str, str]) -> str:
    # RFC 7638 §3: the required members only, sorted, no whitespace.
    canonical = json.dumps(dict(sorted(required.items())), separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


def _member_int(jwk: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_member_bytes(jwk, name), "big")
