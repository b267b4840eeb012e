"""CORS for cross-origin browser apps (docs/security.md): Starlette's `CORSMiddleware`, only where it applies.

Starlette's middleware wraps `send` for every request, which on a stream means every chunk. A
request without an `Origin` header (same-origin GETs, server-to-server calls, the bench) has no
CORS answer to get, so it goes straight to the app; one with `Origin` gets Starlette's handling.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import GatewayConfig

__all__ = ["ALLOWED_REQUEST_HEADERS", "CrossOrigin", "has_origin"]

ALLOWED_REQUEST_HEADERS = ["content-type", "authorization", "chatkit-frame-instance-id", "x-request-id"]


class CrossOrigin:
    def __init__(self, app: ASGIApp, config: GatewayConfig) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(config.cors.allow_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=[*ALLOWED_REQUEST_HEADERS, config.metadata.page_context_header.lower()],
            expose_headers=["x-request-id"],
            max_age=config.cors.max_age_seconds,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and has_origin(scope["headers"]):
            await self.cors(scope, receive, send)
            return
        await self.app(scope, receive, send)


def has_origin(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's (lower-cased) headers carry an `Origin`: only then is there a CORS answer."""
    for name, _ in headers:
        if name == b"origin":
            return True
    return False
