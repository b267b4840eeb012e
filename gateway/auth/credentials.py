"""Where a request's credential comes from: `Authorization: Bearer` first, then the cookies.

Only the extraction happens here; what the token is worth is `verify.py`'s business. A header
too large to hold a token of `auth.max_token_bytes` is refused before it is parsed
(docs/jwt-attacks.md J41).

A cookie named in `auth.cookie_names` that appears twice with different values is refused
(`AmbiguousCredentials`): a sibling subdomain or a plain-http page can set a second `auth_token`
for the same host (RFC 6265 8.5-8.6, "cookie tossing"), and which one a parser keeps (starlette's
keeps the last) would then decide who the user is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..config import AuthConfig
from ..errors import AmbiguousCredentials, InvalidToken

__all__ = ["Credential", "CredentialSource", "extract_credential"]

CredentialSource = Literal["bearer", "cookie"]
MAX_COOKIE_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Credential:
    token: str = ""
    source: CredentialSource = "bearer"

    def __repr__(self) -> str:  # a credential is never printed
        return f"Credential(source={self.source!r})"


def extract_credential(headers: Sequence[tuple[bytes, bytes]], auth: AuthConfig) -> Credential | None:
    """The first credential present, or None. A malformed bearer header is `InvalidToken`."""
    authorization: bytes | None = None
    cookies: list[bytes] = []
    for name, value in headers:
        if name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"cookie":
            cookies.append(value)
    if auth.bearer and authorization is not None:
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() == b"bearer":
            token = token.strip()
            if not token or len(token) > auth.max_token_bytes:
                raise InvalidToken("The bearer token is missing or too long.")
            return Credential(_ascii(token), "bearer")
    if cookies and auth.cookie_names:
        header = b"; ".join(cookies)
        if len(header) > MAX_COOKIE_HEADER_BYTES:
            raise InvalidToken("The Cookie header is too large.")
        jar = _named_cookies(header.decode("latin-1"), auth.cookie_names)
        if any(len(values) > 1 for values in jar.values()):
            raise AmbiguousCredentials()
        for cookie_name in auth.cookie_names:
            cookie = next(iter(jar.get(cookie_name, ())), "")
            if cookie:
                return Credential(cookie, "cookie")
    return None


def _named_cookies(header: str, names: Sequence[str]) -> dict[str, set[str]]:
    """Every value each of `names` has in a Cookie header (RFC 6265 4.2.1 `name=value; ...`)."""
    found: dict[str, set[str]] = {}
    for pair in header.split(";"):
        name, equals, value = pair.partition("=")
        name = name.strip()
        if equals and name in names:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':  # RFC 6265 4.1.1: a quoted cookie-value
                value = value[1:-1]
            found.setdefault(name, set()).add(value)
    return found


def _ascii(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidToken() from None
