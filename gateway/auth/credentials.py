"""Where a request's credential comes from: `Authorization: Bearer` first, then the cookies.

Only the extraction happens here; what the token is worth is `verify.py`'s business. A header
too large to hold a token of `auth.max_token_bytes` is refused before it is parsed
(docs/jwt-attacks.md J41).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from starlette.requests import cookie_parser

from ..config import AuthConfig
from ..errors import InvalidToken

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
        jar = cookie_parser(header.decode("latin-1"))
        for cookie_name in auth.cookie_names:
            cookie = jar.get(cookie_name, "")
            if cookie:
                return Credential(cookie, "cookie")
    return None


def _ascii(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidToken() from None
