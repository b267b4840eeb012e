"""The tokens the gateway signs itself: the identity assertion and the minted tool tokens.

- The assertion (`X-ChatKit-Assertion`) says who the user is to the backend, for one request:
  `exp` 60 s after `iat`, bound to the request by `chatkit.requestId` and to the exact body sent
  upstream by `chatkit.bodySha256`, so a captured assertion replayed with another body is refused.
- A tool token (`X-ChatKit-Token-{name}`) is for one tool server only (`aud`, RFC 8707 §2): the
  backend hands it to that server, which must refuse any token not made for it (MCP authorization,
  2025-06-18, "Token Audience Binding"). `act` names the gateway as the party acting for the user
  (RFC 8693 §4.1). One is signed per user and resource and reused while more than half its
  lifetime remains: signing is the expensive part, and a token a few minutes old is as good.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from cachetools import TTLCache

from ..backend_sdk import body_sha256
from ..clock import Clock
from ..config import TokenResourceConfig, TokensConfig
from .signing import SigningKey

__all__ = ["ASSERTION_SECONDS", "Minter", "body_digest"]

ASSERTION_SECONDS = 60


# `chatkit.bodySha256`: the unpadded base64url SHA-256 of the exact bytes sent upstream, as the
# signed `X-ChatKit-Identity` has it.
body_digest = body_sha256


def _jti() -> str:
    # Unique, not secret (the signature covers it): no system call per token for it.
    return f"{random.getrandbits(128):032x}"


class Minter:
    """Signs assertions and tool tokens with the current key; keeps tool tokens for reuse."""

    def __init__(self, config: TokensConfig, key: SigningKey, clock: Clock) -> None:
        assert config.issuer is not None
        self.issuer = config.issuer
        self.assertion_audience = config.assertion_audience
        self.key = key
        self.clock = clock
        self._scopes = {resource.name: " ".join(resource.scopes) for resource in config.resources}
        self._act = {"sub": config.issuer}
        longest = max((resource.lifetime_seconds for resource in config.resources), default=1)
        # Bounded: the least recently used user's tokens go first. Entries live at most half the
        # longest lifetime; each is also checked against its own resource's half-life.
        self._tokens: TTLCache[tuple[str, str], tuple[str, float]] = TTLCache(
            maxsize=config.cache_size, ttl=longest / 2, timer=clock.time
        )

    def assertion(
        self,
        user_id: str,
        name: str | None,
        email: str | None,
        idp_issuer: str,
        request_id: str,
        body_sha256: str | None,
    ) -> str:
        """The `X-ChatKit-Assertion` of one upstream request (`body_sha256` None for an upload)."""
        now = int(self.clock.time())
        chatkit: dict[str, str] = {"requestId": request_id}
        if body_sha256 is not None:
            chatkit["bodySha256"] = body_sha256
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.assertion_audience,
            "sub": user_id,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
            "jti": _jti(),
        }
        if name is not None:
            claims["name"] = name
        if email is not None:
            claims["email"] = email
        claims["idp_iss"] = idp_issuer
        claims["chatkit"] = chatkit
        return self.key.sign(claims)

    def tool_token(self, user_id: str, resource: TokenResourceConfig) -> str:
        """The user's token for `resource`: the cached one while more than half its life remains."""
        now = self.clock.time()
        cache_key = (user_id, resource.name)
        cached = self._tokens.get(cache_key)
        if cached is not None and now < cached[1]:
            return cached[0]
        iat = int(now)
        claims: dict[str, Any] = {"iss": self.issuer, "aud": resource.audience, "sub": user_id}
        scope = self._scopes[resource.name]
        if scope:
            claims["scope"] = scope  # RFC 8693 §4.2: space-delimited
        claims.update(iat=iat, exp=iat + resource.lifetime_seconds, jti=_jti(), act=self._act)
        token = self.key.sign(claims)
        self._tokens[cache_key] = (token, iat + resource.lifetime_seconds / 2)
        return token

    def tool_tokens(self, user_id: str, resources: Sequence[TokenResourceConfig]) -> list[str]:
        return [self.tool_token(user_id, resource) for resource in resources]
