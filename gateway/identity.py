"""Who the user is, as the gateway tells the backend: claims mapped by `[identity]`.

The same identity goes into the body's `metadata` (`userId`, `userInfo`), the `X-User-Id` and
`X-User-Email` headers, the signed `X-ChatKit-Identity`, the rate-limit keys and the forward-auth
answer. The user id is the issuer's `user_id_prefix` followed by the user id claim, so the same
`sub` from two issuers names two users. Header values are made safe and unambiguous: see
`gateway.backend_sdk.header_value_of`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .auth.verify import Principal
from .backend_sdk import header_value_of as backend_header_value_of
from .config import IdentityConfig, IssuerConfig
from .errors import InvalidClaims
from .headers import Headers

__all__ = ["Identity", "header_bytes_of", "identity_of", "user_id_prefixes"]

logger = logging.getLogger("chatkit_gateway")

# The members of `userInfo` the gateway itself answers for; an extra claim of the same name
# never replaces them (`id` must equal `userId`, `email` must agree with `X-User-Email`).
RESERVED_USER_INFO = frozenset({"id", "name", "email", "issuer"})


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    issuer: str  # the token's `iss`
    name: str | None = None
    email: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # No float in `extra` that is not finite (a claim such as `1e400` reads as infinity): what the
    # gateway writes from this identity, orjson may write (`chatkit.rewrite_body`).
    plain: bool = True

    def user_info(self) -> dict[str, Any]:
        """`metadata.userInfo`: id, name, email, issuer and the extra claims; absent claims left out."""
        info: dict[str, Any] = {"id": self.user_id}
        if self.name is not None:
            info["name"] = self.name
        if self.email is not None:
            info["email"] = self.email
        info["issuer"] = self.issuer
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


def identity_of(principal: Principal, config: IdentityConfig, prefix: str = "") -> Identity:
    """The identity a verified principal speaks for, its user id after `prefix` (the issuer's
    `user_id_prefix`); `InvalidClaims` if it names no user."""
    claims = principal.claims
    user_id = claims.get(config.user_id_claim)
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise InvalidClaims("The token does not name a user.")
    extra = {name: claims[name] for name in config.extra_claims if name in claims and name not in RESERVED_USER_INFO}
    return Identity(
        user_id=prefix + user_id,
        issuer=principal.issuer,
        name=_string_claim(claims, config.name_claim),
        email=_string_claim(claims, config.email_claim),
        extra=extra,
        plain=not extra or _finite(extra),
    )


def _finite(value: Any) -> bool:
    """Whether every float in a claim's JSON value is finite (walked once per verified token)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def user_id_prefixes(issuers: tuple[IssuerConfig, ...]) -> Mapping[str, str]:
    """Each issuer's `user_id_prefix`, looked up by a verified token's `iss` (made once at start-up).

    The configuration refuses two equal prefixes. One that begins another (`"a"` and `"ab"`, or
    `""` and anything) still lets two issuers name one user when an issuer lets its users pick
    their `sub`: that is worth a warning.
    """
    prefixes = {item.issuer: item.user_id_prefix for item in issuers}
    if len(prefixes) > 1:
        for issuer, prefix in prefixes.items():
            for other, longer in prefixes.items():
                if other != issuer and longer.startswith(prefix):
                    logger.warning(
                        "auth.issuers: user_id_prefix %r (%s) begins %r (%s), so their user ids can collide; "
                        "choose prefixes none of which begins another, such as 'a:' and 'b:'",
                        prefix,
                        issuer,
                        longer,
                        other,
                    )
    return prefixes


def header_bytes_of(value: str) -> bytes:
    """The header form of a claim, as ASCII bytes for ASGI: `gateway.backend_sdk.header_value_of`,
    the rule backends import to compare the header with the claim, encoded."""
    return backend_header_value_of(value).encode("ascii")
