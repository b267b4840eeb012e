"""Every error the gateway answers a client with, in one hierarchy.

Each error knows its HTTP status and a stable `code`; `error_body` turns any of them into the
JSON body `{"error": {"code": ..., "message": ...}}`. Library exceptions are translated into these
in one place each (httpx in `relay.py`, python-jose in `auth/jose.py`).

    GatewayError
    ├── BadRequest (400)
    │   ├── InvalidJSON            invalid_json
    │   ├── InvalidChatKitRequest  invalid_request
    │   ├── InvalidUploadPath      invalid_upload_path
    │   ├── InvalidRevocation      invalid_revocation
    │   └── InvalidLogoutToken     invalid_logout_token
    ├── AuthError (401)
    │   ├── MissingCredentials     missing_credentials
    │   ├── InvalidToken           invalid_token
    │   ├── TokenExpired           token_expired
    │   ├── TokenNotYetValid       token_not_yet_valid
    │   ├── UnknownIssuer          unknown_issuer
    │   ├── UnknownKey             unknown_key
    │   ├── InvalidClaims          invalid_claims
    │   ├── TokenRevoked           token_revoked
    │   └── AmbiguousCredentials   ambiguous_credentials
    ├── Forbidden (403)
    │   └── OriginNotAllowed       origin_not_allowed
    ├── NotFound (404)             not_found
    │   └── NotOwned               not_found
    ├── MethodNotAllowed (405)     method_not_allowed
    ├── RequestTimeout (408)       request_timeout
    ├── PayloadTooLarge (413)      payload_too_large
    ├── URITooLong (414)           uri_too_long
    ├── UnsupportedMediaType (415) unsupported_media_type
    ├── RateLimited (429)          rate_limited
    ├── HeadersTooLarge (431)      headers_too_large
    ├── UpstreamError
    │   ├── UpstreamUnavailable (502)  upstream_unavailable
    │   │   └── UpstreamTLSFailed      upstream_unavailable (its reason only in the log)
    │   ├── UpstreamBadResponse (502)  upstream_bad_response
    │   └── UpstreamTimeout (504)      upstream_timeout
    ├── TokenExchangeFailed (502)  token_exchange_failed
    ├── Overloaded (503)           overloaded
    ├── NotReady (503)             not_ready
    ├── RevocationUnavailable (503) revocation_unavailable
    └── OwnershipUnavailable (503) ownership_unavailable
"""

from __future__ import annotations

import json

__all__ = [
    "AmbiguousCredentials",
    "AuthError",
    "BadRequest",
    "Forbidden",
    "GatewayError",
    "HeadersTooLarge",
    "InvalidChatKitRequest",
    "InvalidClaims",
    "InvalidJSON",
    "InvalidLogoutToken",
    "InvalidRevocation",
    "InvalidToken",
    "InvalidUploadPath",
    "MethodNotAllowed",
    "MissingCredentials",
    "NotFound",
    "NotOwned",
    "NotReady",
    "OriginNotAllowed",
    "Overloaded",
    "OwnershipUnavailable",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "RevocationUnavailable",
    "TokenExchangeFailed",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenRevoked",
    "UnknownIssuer",
    "UnknownKey",
    "URITooLong",
    "UnsupportedMediaType",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamTLSFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_body",
]


class GatewayError(Exception):
    """Base of every error answered to a client. `message` is fixed text, never client input."""

    status: int = 500
    code: str = "internal_error"
    default_message: str = "The gateway failed to handle the request."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    default_message = "The request is malformed."


class InvalidJSON(BadRequest):
    code = "invalid_json"
    default_message = "The request body is not valid JSON."


class InvalidChatKitRequest(BadRequest):
    code = "invalid_request"
    default_message = "The request body is not a ChatKit request."


class InvalidUploadPath(BadRequest):
    code = "invalid_upload_path"
    default_message = "The upload path is not allowed."


class InvalidRevocation(BadRequest):
    code = "invalid_revocation"
    default_message = "The body must be a JSON object naming iss with sub, iss with sid, or jti."


class InvalidLogoutToken(BadRequest):
    code = "invalid_logout_token"
    default_message = "The logout token is not valid."


class AuthError(GatewayError):
    status = 401
    code = "unauthorized"
    default_message = "Authentication is required."


class MissingCredentials(AuthError):
    code = "missing_credentials"
    default_message = "No credentials were sent. Sign in and try again."


class InvalidToken(AuthError):
    code = "invalid_token"
    default_message = "The token is not valid."


class TokenExpired(AuthError):
    code = "token_expired"
    default_message = "The token has expired. Sign in again."


class TokenNotYetValid(AuthError):
    code = "token_not_yet_valid"
    default_message = "The token is not valid yet."


class UnknownIssuer(AuthError):
    code = "unknown_issuer"
    default_message = "The token's issuer is not trusted."


class UnknownKey(AuthError):
    code = "unknown_key"
    default_message = "The token was signed with a key the gateway does not know."


class InvalidClaims(AuthError):
    code = "invalid_claims"
    default_message = "The token's claims are not acceptable."


class TokenRevoked(AuthError):
    code = "token_revoked"
    default_message = "The session has been revoked. Sign in again."


class AmbiguousCredentials(AuthError):
    code = "ambiguous_credentials"
    default_message = "The request carries more than one credential cookie of the same name."


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    default_message = "The request is not allowed."


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"
    default_message = "Requests from this origin are not allowed."


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    default_message = "There is nothing at this path."


class NotOwned(NotFound):
    """An id the user does not own, or (with `ownership.unknown = "deny"`) that nobody owns: one
    answer for both, so a 404 says nothing about whether the id exists."""

    default_message = "No such thread or attachment."


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"
    default_message = "This method is not allowed here."


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    default_message = "The request body did not arrive in time."


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class URITooLong(GatewayError):
    status = 414
    code = "uri_too_long"
    default_message = "The request target is too long."


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"
    default_message = "The request body must be application/json."


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"
    default_message = "Too many requests. Try again later."


class HeadersTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"
    default_message = "The request headers are too large."


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"
    default_message = "The ChatKit backend failed."


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"
    default_message = "The ChatKit backend cannot be reached."


class UpstreamTLSFailed(UpstreamUnavailable):
    """The TLS handshake with the backend failed; `reason` (for the log and `/readyz`) says why."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class UpstreamBadResponse(UpstreamError):
    status = 502
    code = "upstream_bad_response"
    default_message = "The ChatKit backend sent an invalid response."


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    default_message = "The ChatKit backend did not answer in time."


class TokenExchangeFailed(GatewayError):
    status = 502
    code = "token_exchange_failed"
    default_message = "A token for one of the assistant's tools could not be obtained."


class Overloaded(GatewayError):
    status = 503
    code = "overloaded"
    default_message = "The gateway is at capacity. Try again shortly."


class NotReady(GatewayError):
    status = 503
    code = "not_ready"
    default_message = "The gateway is not ready."


class RevocationUnavailable(GatewayError):
    status = 503
    code = "revocation_unavailable"
    default_message = "The revocation list cannot be reached. Try again shortly."


class OwnershipUnavailable(GatewayError):
    status = 503
    code = "ownership_unavailable"
    default_message = "The gateway cannot check who owns this conversation right now. Try again shortly."


def error_body(error: GatewayError) -> bytes:
    """The JSON body for an error: `{"error": {"code": ..., "message": ...}}`."""
    return json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
