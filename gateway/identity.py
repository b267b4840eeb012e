"""Who the user is, as the gateway tells the backend: claims mapped by `[identity]`.

The same identity goes into the body's `metadata` (`userId`, `userInfo`), the `X-User-Id` and
`X-User-Email` headers, and the forward-auth answer. Header values are made safe and unambiguous:
see `gateway.backend.header_value_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .auth.verify import Principal
from .backend import header_value_of as backend_header_value_of
from .config import IdentityConfig
from .errors import InvalidClaims
from .headers import Headers

__all__ = ["Identity", "header_bytes_of", "identity_of"]


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    name: str | None = None
    email: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def user_info(self) -> dict[str, Any]:
        """`metadata.userInfo`: id, name, email and the extra claims; absent claims left out."""
        info: dict[str, Any] = {"id": self.user_id}
        if self.name is not None:
            info["name"] = self.name
        if self.email is not None:
            info["email"] = self.email
        info.update(self.extra)
        return info

    def headers(self) -> Headers:
        result = [(b"x-user-id", header_bytes_of(self.user_id))]
        if self.email is not None:
            result.append((b"x-user-email", header_bytes_of(self.email)))
        return result


def _string_claim(claims: Any, name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) else None


def identity_of(principal: Principal, config: IdentityConfig) -> Identity:
    """The identity a verified principal speaks for; `InvalidClaims` if it names no user."""
    claims = principal.claims
    user_id = claims.get(config.user_id_claim)
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise InvalidClaims("The token does not name a user.")
    extra = {name: claims[name] for name in config.extra_claims if name in claims}
    return Identity(
        user_id=user_id,
        name=_string_claim(claims, config.name_claim),
        email=_string_claim(claims, config.email_claim),
        extra=extra,
    )


def header_bytes_of(value: str) -> bytes:
    """The header form of a claim, as ASCII bytes for ASGI: `gateway.backend.header_value_of`,
    the rule backends import to compare the header with the claim, encoded."""
    return backend_header_value_of(value).encode("ascii")
