"""`POST /auth/backchannel-logout`: OpenID Connect Back-Channel Logout 1.0.

The identity provider posts a `logout_token` (a form field) when a user signs out there. It is
verified as the user's tokens are (strict compact JWS, the issuer's `alg` allowlist, its key by
`kid` from its own JWKS), then as §2.6 of the spec asks: `aud` is the issuer entry's
`backchannel_audience` (an entry without one accepts none), `iat` and `exp` present and sound,
`events` holds the back-channel logout member, `sub` and/or `sid`, no `nonce` (so an ID token
cannot pass for one), `jti` never seen before. Its effect is a revocation: with `sid`, that IdP
session's tokens; with only `sub`, every token of the user issued up to the logout. `200` with
`Cache-Control: no-store`, or `400` (`invalid_logout_token`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from ..auth.jws import parse_compact_jws
from ..auth.verify import _check_audience, _numeric_date, verify_jws_signature
from ..body import read_body
from ..config import IssuerConfig
from ..endpoint import Endpoint
from ..errors import InvalidLogoutToken, MethodNotAllowed, NotFound
from ..headers import Headers, header_value
from ..observe import Exchange
from ..runtime import Runtime
from .entries import Key
from .revocations import DEFAULT_TTL_SECONDS

__all__ = ["BACKCHANNEL_LOGOUT_EVENT", "BackchannelLogoutEndpoint", "LogoutToken", "verify_logout_token"]

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# §2.4: `logout+jwt` is the explicit type; `JWT` and none are what providers send in practice.
LOGOUT_TOKEN_TYPES = frozenset({"logout+jwt", "jwt"})
MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_SECONDS = 10.0
FORM = b"application/x-www-form-urlencoded"
OK_HEADERS: Headers = [(b"cache-control", b"no-store"), (b"content-length", b"0")]


@dataclass(frozen=True)
class LogoutToken:
    issuer: str
    subject: str | None
    session: str | None
    jti: str
    issued_at: float
    usable_until: float  # `exp` plus the issuer's leeway

    @property
    def key(self) -> Key:
        """`sid` ends that session only; `sub` alone, all the user's sessions (§2.4)."""
        if self.session is not None:
            return ("sid", self.issuer, self.session)
        assert self.subject is not None
        return ("sub", self.issuer, self.subject)


async def verify_logout_token(runtime: Runtime, token: str) -> LogoutToken:
    """The verified logout token, or `InvalidLogoutToken` (and nothing else)."""
    try:
        return await _verify(runtime, token)
    except InvalidLogoutToken:
        raise
    except Exception:
        # A verifier error (bad signature, unknown key, malformed JSON) or a library's: one fixed answer.
        raise InvalidLogoutToken() from None


async def _verify(runtime: Runtime, token: str) -> LogoutToken:
    authenticator = runtime.authenticator
    parsed = parse_compact_jws(token, max_bytes=runtime.config.auth.max_token_bytes, types=LOGOUT_TOKEN_TYPES)
    claims = parsed.claims
    issuer = _issuer(runtime, claims.get("iss"))
    if parsed.alg not in issuer.algorithms:
        raise InvalidLogoutToken("The logout token's algorithm is not allowed.")
    key = await authenticator.caches[issuer.issuer].get_key(parsed.kid)
    if key is None:
        raise InvalidLogoutToken("The logout token was signed with an unknown key.")
    verify_jws_signature(parsed, key)
    assert issuer.backchannel_audience is not None
    _check_audience(claims.get("aud"), (issuer.backchannel_audience,))
    return _checked_claims(claims, issuer, runtime.clock.time())


def _issuer(runtime: Runtime, iss: object) -> IssuerConfig:
    for issuer in runtime.config.auth.issuers:
        if issuer.issuer == iss and issuer.backchannel_audience is not None:
            return issuer
    raise InvalidLogoutToken("The logout token's issuer is not accepted.")


def _checked_claims(claims: Mapping[str, Any], issuer: IssuerConfig, now: float) -> LogoutToken:
    iat, exp = _numeric_date(claims, "iat"), _numeric_date(claims, "exp")
    if iat is None or exp is None:
        raise InvalidLogoutToken("The logout token needs iat and exp.")
    leeway = issuer.leeway_seconds
    if exp <= now - leeway:
        raise InvalidLogoutToken("The logout token has expired.")
    if iat > now + leeway:
        raise InvalidLogoutToken("The logout token was issued in the future.")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise InvalidLogoutToken("The logout token has no back-channel logout event.")
    if "nonce" in claims:
        # §2.4: prohibited, so that an ID token can never be taken for a logout token.
        raise InvalidLogoutToken("The logout token must not have a nonce.")
    sub, sid, jti = claims.get("sub"), claims.get("sid"), claims.get("jti")
    if sub is not None and (not isinstance(sub, str) or not sub):
        raise InvalidLogoutToken("The logout token's sub is not acceptable.")
    if sid is not None and (not isinstance(sid, str) or not sid):
        raise InvalidLogoutToken("The logout token's sid is not acceptable.")
    if sub is None and sid is None:
        raise InvalidLogoutToken("The logout token names neither sub nor sid.")
    if not isinstance(jti, str) or not jti:
        raise InvalidLogoutToken("The logout token has no jti.")
    return LogoutToken(issuer.issuer, sub, sid, jti, iat, exp + leeway)


def _logout_token_of(body: bytes) -> str:
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise InvalidLogoutToken("The request must be a form with one logout_token field.") from None
    values = fields.get("logout_token", [])
    if len(values) != 1:
        raise InvalidLogoutToken("The request must be a form with one logout_token field.")
    return values[0]


class BackchannelLogoutEndpoint(Endpoint):
    """The logout route: 404 with revocation off, else 405, 400, 503 or 200."""

    route = "backchannel_logout"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime.observer)
        self.runtime = runtime

    async def handle(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        revocations = self.runtime.revocations
        if revocations is None:
            raise NotFound()
        if scope["method"] != "POST":
            raise MethodNotAllowed(headers={"Allow": "POST"})
        headers: Headers = scope["headers"]
        content_type = (header_value(headers, b"content-type") or b"").partition(b";")[0].strip().lower()
        if content_type != FORM:
            raise InvalidLogoutToken("The request must be a form with one logout_token field.")
        body = await read_body(receive, headers, MAX_BODY_BYTES, BODY_TIMEOUT_SECONDS)
        logout = await verify_logout_token(self.runtime, _logout_token_of(body))
        # §2.6 step 6: a jti seen before is a replay; remembered until the token could not pass
        # anyway. Claimed in the same step as the revocation, so a store failure loses neither.
        lifetime = max(1.0, logout.usable_until - revocations.clock.time())
        once = (json.dumps(["logout", logout.issuer, logout.jti]), lifetime)
        issued_before = math.inf if logout.session is not None else logout.issued_at
        if not await revocations.revoke(
            [logout.key], DEFAULT_TTL_SECONDS, source="backchannel", issued_before=issued_before, once=once
        ):
            raise InvalidLogoutToken("The logout token was used before.")
        exchange.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": OK_HEADERS})
        await send({"type": "http.response.body", "body": b""})
