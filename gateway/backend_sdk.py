"""For backend authors: who the gateway says the user is, as a ChatKit `context`, in one call.

The gateway writes `userId`, `userInfo` (its `issuer` the token's `iss`), `pageContext` and
`requestId` into the body's `metadata`, and sends `X-User-Id` (and `X-User-Email` when the user
has one). A backend that only the gateway can reach ("trusted network": a sidecar on localhost, a
NetworkPolicy) may believe the body when those headers agree with it. A backend that others can
reach sets `upstream.identity_secret` in the gateway and the same secret here: the gateway then
signs `X-ChatKit-Identity` (itsdangerous, valid for `max_age` seconds) over that metadata, the
issuer and `bodySha256`, the SHA-256 of the exact body bytes it sends. A caller can neither forge
nor alter the identity, and a header captured from one request cannot vouch for another body
(another op, another thread): `chatkit_context` checks the hash against the body it reads.

    from chatkit.server import ChatKitServer, StreamingResult
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse

    from gateway.backend_sdk import InvalidIdentity, chatkit_context, mcp_headers

    async def chatkit_endpoint(request: Request) -> Response:
        try:
            context = await chatkit_context(request, secret=IDENTITY_SECRET)  # None: trusted network
        except InvalidIdentity:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        result = await server.process(await request.body(), context)  # Starlette caches the body
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(result.json, media_type="application/json")

An upload's body streams through the gateway unread, so its header is signed with
`bodySha256: null`: an upload handler calls `verify_identity(header, secret)` without `body`, and
`chatkit_context` never accepts such a header.

Tools: with `[[tokens.resources]]` configured, the gateway sends each request a token made for one
tool server only (`X-ChatKit-Token-{name}`: its `aud` is that server, it lives minutes, it names the
gateway as the actor). `tool_token(request, "crm")` returns it; pass it to that tool server as
`Authorization: Bearer` in the MCP client's HTTP headers, never in a prompt, a log or `metadata`:
whatever a model reads, a model can repeat (docs/tokens.md).

`context["accessToken"]` is the user's own token when the gateway forwards it
(`upstream.forward_access_token`), and `mcp_headers(context)` hands that token to a tool. That is the
weaker option: the tool gets a token valid everywhere the user's is, and the MCP authorization spec
forbids a server to accept a token not issued for it. Prefer `tool_token`.

This module imports only the standard library and itsdangerous, so a backend need not install the
gateway's runtime (httpx, python-jose, uvicorn) to use it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast
from urllib.parse import quote

from itsdangerous import BadData, URLSafeTimedSerializer

__all__ = [
    "IDENTITY_HEADER",
    "IDENTITY_SALT",
    "METADATA_KEYS",
    "SIGNED_KEYS",
    "InvalidIdentity",
    "body_sha256",
    "chatkit_context",
    "context_from",
    "header_value_of",
    "mcp_headers",
    "sign_identity",
    "tool_token",
    "verify_identity",
]

IDENTITY_SALT = "chatkit-gateway.identity"
IDENTITY_HEADER = "X-ChatKit-Identity"
# What the gateway writes into the body's `metadata`, and signs with the token's issuer and the
# hash of the exact body bytes it sends.
METADATA_KEYS = ("userId", "userInfo", "pageContext", "requestId")
SIGNED_KEYS = (*METADATA_KEYS, "issuer", "bodySha256")

# A secret, or several to rotate one: signing uses the last, verifying accepts any (itsdangerous).
Secret = str | Sequence[str]


class InvalidIdentity(Exception):
    """The request does not carry an identity this backend can trust; answer 401 or 403."""


class RequestLike(Protocol):
    """What `chatkit_context` needs of a request: Starlette's (and so FastAPI's) `Request` fits."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def body(self) -> bytes: ...


def _serializer(secret: Secret) -> URLSafeTimedSerializer:
    return _serializer_for((secret,) if isinstance(secret, str) else tuple(secret))


@functools.lru_cache(maxsize=16)
def _serializer_for(keys: tuple[str, ...]) -> URLSafeTimedSerializer:
    # Made once per secret, not per request: the gateway signs every request with it.
    # An empty key signs with a value anyone knows; refuse it rather than accept forgeries.
    if not keys or not all(keys):
        raise ValueError("the identity secret must not be empty")
    return URLSafeTimedSerializer(list(keys), salt=IDENTITY_SALT)


def body_sha256(body: bytes) -> str:
    """`bodySha256` of a body: the unpadded base64url SHA-256 of its exact bytes."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode("ascii")


def _checked_identity(value: object, where: str) -> dict[str, Any]:
    """`value` if it is a whole signed identity (every key of `SIGNED_KEYS`, each of its type)."""
    if not isinstance(value, dict):
        raise InvalidIdentity(f"{where} is not an object")
    missing = [key for key in SIGNED_KEYS if key not in value]
    if missing:
        raise InvalidIdentity(f"{where} has no {', '.join(missing)}")
    _check_metadata_identity(value, where)
    issuer, digest = value["issuer"], value["bodySha256"]
    if not isinstance(issuer, str) or not issuer:
        raise InvalidIdentity(f"{where} has no string issuer")
    if digest is not None and not isinstance(digest, str):
        raise InvalidIdentity(f"{where} has a bodySha256 that is not a string")
    return {key: value[key] for key in SIGNED_KEYS}


def _check_metadata_identity(value: Mapping[str, Any], where: str) -> None:
    user_id, user_info, page_context, request_id = (value.get(key) for key in METADATA_KEYS)
    if not isinstance(user_id, str) or not user_id:
        raise InvalidIdentity(f"{where} has no string userId")
    if not isinstance(user_info, dict):
        raise InvalidIdentity(f"{where} has no object userInfo")
    if page_context is not None and not isinstance(page_context, dict):
        raise InvalidIdentity(f"{where} has a pageContext that is not an object")
    if not isinstance(request_id, str):
        raise InvalidIdentity(f"{where} has no string requestId")


def sign_identity(
    identity: Mapping[str, Any], secret: Secret, *, body: bytes | None = None, body_digest: str | None = None
) -> str:
    """The `X-ChatKit-Identity` value for `identity` (`userId`, `userInfo`, `pageContext`,
    `requestId`, `issuer`) bound to `body`, the exact bytes sent with it (None: a streamed upload,
    signed with `bodySha256: null`). `body_digest`: its `body_sha256`, when already computed."""
    payload = {key: identity.get(key) for key in METADATA_KEYS}
    payload["issuer"] = identity.get("issuer")
    if body_digest is None and body is not None:
        body_digest = body_sha256(body)
    payload["bodySha256"] = body_digest
    try:
        checked = _checked_identity(payload, "identity")
    except InvalidIdentity as exc:
        raise ValueError(str(exc)) from None
    return _serializer(secret).dumps(checked)


def verify_identity(value: str, secret: Secret, *, max_age: int = 60, body: bytes | None = None) -> dict[str, Any]:
    """The identity signed into `value`, or `InvalidIdentity` (bad signature, expired, malformed).

    With `body`, the identity must have been signed for exactly these bytes: a captured header
    replayed with another body (another op, another thread) is refused, and so is one signed
    without a body hash (an upload's).
    """
    try:
        payload = _serializer(secret).loads(value, max_age=max_age)
    except BadData as exc:
        # BadData covers a wrong signature, an expired or future timestamp and an unreadable payload.
        raise InvalidIdentity(f"{IDENTITY_HEADER} is not valid: {exc}") from None
    identity = _checked_identity(payload, IDENTITY_HEADER)
    if body is not None:
        signed_digest = identity["bodySha256"]
        if signed_digest is None:
            raise InvalidIdentity(f"{IDENTITY_HEADER} was signed without a body hash (an upload's)")
        if signed_digest != body_sha256(body):
            raise InvalidIdentity(f"{IDENTITY_HEADER} was signed for another body")
    return identity


def header_value_of(value: str) -> str:
    """How the gateway writes a claim into a header: unambiguous, `unquote(header) == claim`.

    A value that is printable ASCII, holds no `%` and no surrounding space goes as it is; any other
    is percent-encoded (`%` included), so two different claims never make the same header and a
    newline in a claim can never become a header line.
    """
    if value.isascii() and value.isprintable() and "%" not in value and value == value.strip():
        return value
    return quote(value, safe="!#$&'()*+,/:;=?@[]~")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The one value of header `name`, any case; two different values are ambiguous and refused."""
    name = name.lower()
    # Starlette's Headers lists repeated headers in items(); a plain dict may use any case.
    values = {value for key, value in headers.items() if key.lower() == name}
    if len(values) > 1:
        raise InvalidIdentity(f"conflicting {name} headers")
    return values.pop() if values else None


def _metadata_of(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidIdentity("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidIdentity("the body is not a JSON object")
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        raise InvalidIdentity("the body has no metadata object (did it come through the gateway?)")
    return metadata


def _bearer_token(headers: Mapping[str, str]) -> str | None:
    authorization = _header(headers, "authorization")
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and " " not in token else None


def _check_user_headers(
    headers: Mapping[str, str], user_id: str, user_info: Mapping[str, Any], *, required: bool
) -> None:
    """`X-User-Id` and `X-User-Email` must say what the identity says. `required`: each header
    must be there exactly when the identity has its value (an email in one and not the other
    disagrees); otherwise a header, when present, must agree."""
    user_header = _header(headers, "x-user-id")
    if user_header is None:
        if required:
            raise InvalidIdentity("X-User-Id is missing")
    elif user_header != header_value_of(user_id):
        raise InvalidIdentity("X-User-Id differs from the body's userId")
    email = user_info.get("email")
    email_header = _header(headers, "x-user-email")
    if email_header is None:
        if required and email is not None:
            raise InvalidIdentity("X-User-Email is missing but userInfo has an email")
    elif not isinstance(email, str) or email_header != header_value_of(email):
        raise InvalidIdentity("X-User-Email differs from the body's userInfo.email")


def context_from(
    headers: Mapping[str, str], body: bytes, *, secret: Secret | None = None, max_age: int = 60
) -> dict[str, Any]:
    """The ChatKit `context` for a request's headers and raw body; `InvalidIdentity` if untrusted.

    Keys: `userId`, `userInfo`, `pageContext` (an object or None), `requestId`, and `accessToken`
    (the forwarded bearer token, or None). With `secret`, the signed `X-ChatKit-Identity` header is
    required, must have been signed for exactly this body, and the body's metadata must match it.
    Without, the body's metadata is believed when `X-User-Id` and `X-User-Email` agree with it.
    """
    verified = None
    if secret is not None:
        signed = _header(headers, IDENTITY_HEADER)
        if signed is None:
            raise InvalidIdentity(f"{IDENTITY_HEADER} is missing")
        # The body hash binds the header to this body: a header captured from one request and
        # replayed with another body (another op, another thread) is refused here.
        verified = verify_identity(signed, secret, max_age=max_age, body=body)
    metadata = _metadata_of(body)
    page_context = metadata.get("pageContext")
    identity: dict[str, Any] = {key: metadata.get(key) for key in METADATA_KEYS}
    identity["pageContext"] = page_context if isinstance(page_context, dict) else None
    _check_metadata_identity(identity, "metadata")
    if verified is not None and any(verified[key] != identity[key] for key in METADATA_KEYS):
        raise InvalidIdentity(f"the body's identity differs from {IDENTITY_HEADER}")
    _check_user_headers(headers, identity["userId"], identity["userInfo"], required=verified is None)
    return {**identity, "accessToken": _bearer_token(headers)}


async def chatkit_context(request: RequestLike, *, secret: Secret | None = None, max_age: int = 60) -> dict[str, Any]:
    """`context_from` for a Starlette or FastAPI request; the body stays readable afterwards."""
    return context_from(request.headers, await request.body(), secret=secret, max_age=max_age)


TOOL_TOKEN_HEADER_PREFIX = "X-ChatKit-Token-"


def tool_token(request: RequestLike | Mapping[str, str], name: str) -> str | None:
    """The gateway's token for the tool server `name` (`[[tokens.resources]]`), or None.

    Give it to that server only, as `Authorization: Bearer` in the MCP client's HTTP headers; it
    is bound to that server's audience, so no other server accepts it. Never put it in a prompt, a
    log line or `metadata`. Accepts a Starlette/FastAPI request or a headers mapping.
    """
    # A Starlette `Request` is itself a Mapping (of its ASGI scope): look for `.headers` first.
    headers = cast("Mapping[str, str]", getattr(request, "headers", request))
    try:
        value = _header(headers, TOOL_TOKEN_HEADER_PREFIX + name)
    except InvalidIdentity:
        return None  # two different values: neither is the gateway's word
    return value or None


def mcp_headers(context: Mapping[str, Any]) -> dict[str, str]:
    """HTTP headers that carry the user's *own* token and id to an MCP server or other tool.

    The weaker option, kept for backends that cannot use `tool_token` yet: the tool receives the
    user's token itself, which is valid everywhere the user's is (and which the MCP authorization
    spec forbids a tool server to accept). Only with `upstream.forward_access_token`; for a tool's
    HTTP transport, never for a prompt or a log.
    """
    headers: dict[str, str] = {}
    token = context.get("accessToken")
    if isinstance(token, str) and token:
        headers["Authorization"] = f"Bearer {token}"
    user_id = context.get("userId")
    if isinstance(user_id, str) and user_id:
        headers["X-User-Id"] = header_value_of(user_id)
    return headers
