"""Token verification: a compact JWS in, a `Principal` or an `AuthError` out.

    size -> parse (jws.py) -> issuer by unverified `iss` -> `alg` in that issuer's allowlist
         -> key by `kid` from that issuer's key source -> key fits `alg` -> signature -> claims

Nothing but `AuthError` leaves `TokenVerifier.verify`: attacker input never becomes a 500.
Successful verifications are cached under the SHA-256 digest of the token, never the token.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cachetools import LRUCache

from gateway.auth.jose import PublicKey, key_fits, verify_signature
from gateway.auth.jws import CompactJWS, ParsedToken, check_token_size, parse_compact_jws
from gateway.clock import SYSTEM_CLOCK, Clock
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

__all__ = ["KeySource", "Principal", "TokenVerifier", "verify_jws_signature"]


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for. `source` is set by the caller with `dataclasses.replace`."""

    subject: str
    issuer: str
    claims: Mapping[str, Any] = field(compare=False)
    expires_at: float
    # The raw token is kept for `upstream.forward_access_token` but never printed.
    token: str = field(repr=False)
    source: Literal["bearer", "cookie"] | None = None
    # What requests derive from this verified token, made once for as long as the token cache
    # keeps the principal: its copy with each source, and the identity the copy names
    # (`Runtime.authenticate`). Each is a function of the verified claims and of its key alone.
    derived: dict[object, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def with_source(self, source: Literal["bearer", "cookie"]) -> Principal:
        sourced: Principal | None = self.derived.get(source)
        if sourced is None:
            # Direct construction: `dataclasses.replace` introspects the fields on every call.
            sourced = Principal(self.subject, self.issuer, self.claims, self.expires_at, self.token, source)
            self.derived[source] = sourced
        return sourced


class KeySource(Protocol):
    """One issuer's verification keys by `kid` (the JWKS cache)."""

    async def get_key(self, kid: str) -> PublicKey | None:
        """The key, or None if the kid is unknown even after a (rate-limited) refetch.

        May raise `UnknownKey` when the key set is unusable or stale beyond its limit.
        """


def verify_jws_signature(jws: CompactJWS, key: PublicKey) -> None:
    """Check only that `key` fits the header `alg` and signed the token; claims are NOT checked.

    A building block of `TokenVerifier` (and the Wycheproof tests); it authenticates nobody alone.
    """
    if not key_fits(key, jws.alg):
        # RFC 8725 §3.1: the key's own algorithm, not the header's choice (kid/alg confusion).
        raise InvalidToken("The token's algorithm does not match its key.")
    if not verify_signature(key, jws.alg, jws.signing_input, jws.signature):
        raise InvalidToken("The token's signature is not valid.")


class TokenVerifier:
    """Verifies tokens of the configured issuers, each against its own key source."""

    def __init__(self, auth: AuthConfig, key_sources: Mapping[str, KeySource], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in auth.issuers}
        missing = self._issuers.keys() - key_sources.keys()
        if missing:
            raise ValueError(f"no key source for issuer(s): {', '.join(sorted(missing))}")
        self._key_sources = {name: key_sources[name] for name in self._issuers}
        self._max_bytes = auth.max_token_bytes
        self._clock = clock
        self._cache = _TokenCache(auth.token_cache_size, auth.token_cache_seconds, clock)
        # Verifications the cache could not answer (tracing tells a hit from a miss with it).
        self.misses = 0

    async def verify(self, token: str) -> Principal:
        """The principal a token speaks for; raises an `AuthError` subclass and nothing else."""
        try:
            digest = hashlib.sha256(check_token_size(token, self._max_bytes).encode("ascii")).digest()
            principal = self._cache.get(digest)
            if principal is None:
                self.misses += 1
                principal = await self._verify_uncached(token)
                self._cache.put(digest, principal)
            return principal
        except AuthError:
            raise
        except Exception:
            # python-jose, a key source or a bug of ours: a 401 with a fixed message, never a
            # 500, and no chained text that could quote the token (docs/jwt-attacks.md, "python-jose 3.5.0").
            raise InvalidToken() from None

    async def _verify_uncached(self, token: str) -> Principal:
        parsed = parse_compact_jws(token, max_bytes=self._max_bytes)
        issuer = self._issuer_of(parsed)
        if parsed.alg not in issuer.algorithms:
            # Never `none`, never HMAC: the allowlist is the issuer's, not the header's (jwt-attacks.md J01-J05).
            raise InvalidToken("The token's algorithm is not allowed.")
        key = await self._key_sources[issuer.issuer].get_key(parsed.kid)
        if key is None:
            raise UnknownKey()
        verify_jws_signature(parsed, key)
        return self._principal(parsed, issuer, token)

    def _issuer_of(self, parsed: ParsedToken) -> IssuerConfig:
        # The unverified `iss` only chooses whose keys to try; the signature then binds it.
        iss = parsed.claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise UnknownIssuer()
        return issuer

    def _principal(self, parsed: ParsedToken, issuer: IssuerConfig, token: str) -> Principal:
        claims = parsed.claims
        for name in issuer.required_claims:
            if name not in claims:
                raise InvalidClaims("A required claim is missing.")
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        if exp is None:
            # python-jose treats exp as optional; a token without one would never expire (jwt-attacks.md J15).
            raise InvalidClaims("The token has no expiry.")
        _check_audience(claims.get("aud"), issuer.audiences)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidClaims("The token's subject is not acceptable.")
        now, leeway = self._clock.time(), issuer.leeway_seconds
        if exp <= now - leeway:
            raise TokenExpired()
        if nbf is not None and nbf > now + leeway:
            raise TokenNotYetValid()
        if iat is not None and iat > now + leeway:
            # python-jose only type-checks iat; a token from the future is not one we issued (jwt-attacks.md J14).
            raise InvalidClaims("The token was issued in the future.")
        return Principal(subject=subject, issuer=issuer.issuer, claims=claims, expires_at=exp, token=token)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    # RFC 7519 §2 NumericDate: a JSON number. Not a numeric string, not a bool (an int subclass),
    # and finite: python-jose took "9999999999" and raised OverflowError on 1e400 (jwt-attacks.md J16-J17).
    if name not in claims:
        return None
    value = claims[name]
    if type(value) is not int and type(value) is not float:
        raise InvalidClaims("A time claim is not a number.")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidClaims("A time claim is not a number.") from None
    if not math.isfinite(number):
        raise InvalidClaims("A time claim is not a number.")
    return number


def _check_audience(aud: object, audiences: tuple[str, ...]) -> None:
    # RFC 7519 §4.1.3, RFC 8725 §3.9: required, a string or a list of strings, one of them ours.
    if isinstance(aud, str):
        values: list[Any] = [aud]
    elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        values = aud
    else:
        raise InvalidClaims("The token's audience is not acceptable.")
    if not any(item in audiences for item in values):
        raise InvalidClaims("The token's audience is not acceptable.")


class _TokenCache:
    """Verified principals by token digest: LRU-bounded (`cachetools.LRUCache`), each entry living
    until the earlier of `lifetime` seconds and the token's `exp`, which is re-checked on every hit.

    Keyed by digest so the cache holds no bearer credential; only successes are stored, so
    garbage tokens cannot grow it. (Not `cachetools.TLRUCache`: its expiry runs on one timer,
    while here the bound is monotonic and `exp` is wall-clock time, both from the swappable clock.)
    """

    def __init__(self, maxsize: int, lifetime: float, clock: Clock) -> None:
        self._maxsize = maxsize
        self._lifetime = lifetime
        self._clock = clock
        self._entries: LRUCache[bytes, tuple[Principal, float]] = LRUCache(max(maxsize, 1))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> Principal | None:
        entry = self._entries.get(digest)  # a hit becomes the most recently used
        if entry is None:
            return None
        principal, deadline = entry
        # `exp` is re-checked against the wall clock on every hit, whatever the entry's deadline.
        if self._clock.monotonic() >= deadline or self._clock.time() >= principal.expires_at:
            del self._entries[digest]
            return None  # a full verification decides, with the issuer's leeway
        return principal

    def put(self, digest: bytes, principal: Principal) -> None:
        remaining = min(self._lifetime, principal.expires_at - self._clock.time())
        if self._maxsize <= 0 or remaining <= 0:
            return
        # Beyond `maxsize`, the least recently used entry goes.
        self._entries[digest] = (principal, self._clock.monotonic() + remaining)
