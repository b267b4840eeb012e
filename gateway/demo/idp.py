"""The demo's development identity provider: one RSA key made at start, JWKS, and a sign-in form.

It stands in for your real provider (Auth0, Keycloak, Entra ID, ...) and is nothing more than one:
the gateway verifies its tokens with the same code and configuration as any issuer's.

It has two faces, served on two origins:

- `discovery_app()`: `/.well-known/openid-configuration` and `/jwks.json` on an internal loopback
  port. The gateway fetches the keys during its start-up, before the front port answers, so they
  cannot be served behind the gateway itself.
- `signin` and `signout`, mounted on the front origin by `gateway.demo.page`: the `auth_token`
  cookie must belong to the origin the browser talks to.

Tokens are signed with `cryptography` directly (RS256 is PKCS #1 v1.5 over SHA-256, RFC 7518
3.3), so python-jose stays in the gateway's one JOSE module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..auth.origin import origin_of

__all__ = ["AUDIENCE", "COOKIE_NAME", "TOKEN_LIFETIME_SECONDS", "DevIdentityProvider", "SignInError"]

AUDIENCE = "chatkit-demo"
COOKIE_NAME = "auth_token"
TOKEN_LIFETIME_SECONDS = 15 * 60
MAX_FORM_BYTES = 4096
MAX_USERNAME_CHARS = 64
MAX_EMAIL_CHARS = 254
EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


class SignInError(ValueError):
    """The sign-in form was not filled in usably; the message says what to fix."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _compact_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def user_id_for(username: str) -> str:
    """The `sub` claim for a user name: stable, and visibly from this provider (`demo|ada`)."""
    return f"demo|{username}"


def parse_signin_form(fields: dict[str, str]) -> tuple[str, str | None]:
    """`(username, email or None)` from the posted form, or `SignInError`."""
    username = " ".join(fields.get("username", "").split())
    if not username:
        raise SignInError("Please enter a user name.")
    if len(username) > MAX_USERNAME_CHARS or not username.isprintable():
        raise SignInError(f"A user name is at most {MAX_USERNAME_CHARS} printable characters.")
    email = fields.get("email", "").strip() or None
    if email is not None and (len(email) > MAX_EMAIL_CHARS or not EMAIL.fullmatch(email)):
        raise SignInError("That email address does not look right (leave it empty if you like).")
    return username, email


class DevIdentityProvider:
    """Signs short-lived RS256 tokens for whoever signs in; publishes its one public key."""

    def __init__(self, issuer: str, allowed_origins: frozenset[str]) -> None:
        self.issuer = issuer
        # Sign-in and sign-out change who the browser is: like the gateway's cookie rule (docs/security.md),
        # only the demo's own pages may ask for that (login CSRF).
        self.allowed_origins = allowed_origins
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        self._public_jwk = {"kty": "RSA", "e": b64url(_int_bytes(numbers.e)), "n": b64url(_int_bytes(numbers.n))}
        # RFC 7638 thumbprint: the members in lexicographic order, no white space.
        self.kid = b64url(hashlib.sha256(_compact_json(self._public_jwk)).digest())

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks.json"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self._public_jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    # -- tokens ------------------------------------------------------------------------------

    def issue_token(self, username: str, email: str | None, *, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": user_id_for(username),
            "name": username,
            "iat": issued,
            "exp": issued + TOKEN_LIFETIME_SECONDS,
        }
        if email is not None:
            claims["email"] = email
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(_compact_json(header))}.{b64url(_compact_json(claims))}"
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def claims_of(self, token: str | None) -> dict[str, Any] | None:
        """The claims of a current token of ours, else None. Only for showing who is signed in:
        the gateway checks every request itself."""
        if not token or token.count(".") != 2:
            return None
        signing_input, _, signature = token.rpartition(".")
        try:
            self._key.public_key().verify(
                b64url_decode(signature), signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
            claims = json.loads(b64url_decode(signing_input.split(".")[1]))
        except (InvalidSignature, ValueError, UnicodeError):
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
            return None
        return claims

    # -- HTTP: discovery and keys (internal port) ---------------------------------------------

    def discovery_app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url,
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            )

        async def jwks(request: Request) -> Response:
            # The key lives as long as the process; an hour's cache is what a real IdP might say.
            return JSONResponse(self.jwks(), headers={"Cache-Control": "public, max-age=3600"})

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery, methods=["GET"]),
                Route("/jwks.json", jwks, methods=["GET"]),
            ]
        )

    # -- HTTP: sign-in and sign-out (front origin) --------------------------------------------

    def _from_allowed_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            referer = request.headers.get("referer")
            origin = origin_of(referer) if referer is not None else None
        return origin is not None and origin_of(origin) in self.allowed_origins

    async def signin(self, request: Request) -> Response:
        """`POST /signin` (form: `username`, optional `email`): set the cookie, back to `/`."""
        if not self._from_allowed_origin(request):
            return PlainTextResponse("Sign in from the demo page.", status_code=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return PlainTextResponse("The form is too large.", status_code=413)
        fields = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        try:
            username, email = parse_signin_form(fields)
        except SignInError as exc:
            return HTMLResponse(
                f'<!doctype html><meta charset="utf-8"><title>Sign in</title><p>{exc}</p><p><a href="/">Back</a></p>',
                status_code=400,
            )
        # 303 to a fixed path: the form cannot name where to go next, so it cannot be an open redirect.
        response = RedirectResponse("/", status_code=303)
        response.headers.append("set-cookie", session_cookie(self.issue_token(username, email), TOKEN_LIFETIME_SECONDS))
        return response

    async def signout(self, request: Request) -> Response:
        """`POST /signout`: clear the cookie, back to `/`."""
        if not self._from_allowed_origin(request):
            return PlainTextResponse("Sign out from the demo page.", status_code=403)
        response = RedirectResponse("/", status_code=303)
        response.headers.append("set-cookie", session_cookie("", 0))
        return response


def session_cookie(token: str, max_age: int) -> str:
    """The `auth_token` cookie: unreadable by scripts (HttpOnly) and not sent on cross-site POSTs
    (SameSite=Lax). No `Secure`: the demo is plain http on loopback; a real deployment adds it."""
    return f"{COOKIE_NAME}={token}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
