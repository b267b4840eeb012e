"""`GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`, from the gateway itself.

Verifiers of the gateway's tokens (a backend checking the assertion, a tool server checking its
token) find the keys here by URL or by discovery (OpenID Connect Discovery 1.0 §4). Both documents
are encoded once at start-up; with no signing key configured both answer the JSON 404.
"""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from ..errors import MethodNotAllowed, NotFound
from ..responses import send_error
from .signing import PublishedKeys

__all__ = ["DISCOVERY_PATH", "JWKS_PATH", "WellKnownDocument", "well_known_documents"]

JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
# Verifiers may keep the keys five minutes; a rotation publishes the next key at least that long
# before it signs (docs/tokens.md).
CACHE_CONTROL = b"public, max-age=300"
READ_METHODS = frozenset({"GET", "HEAD"})


class WellKnownDocument:
    """One JSON document answered as it was encoded at start-up (or the JSON 404 without a key)."""

    def __init__(self, body: bytes | None) -> None:
        self.body = body
        if body is not None:
            self.headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                (b"cache-control", CACHE_CONTROL),
            ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.body is None:
            await send_error(send, NotFound())
            return
        if scope["method"] not in READ_METHODS:
            await send_error(send, MethodNotAllowed(headers={"Allow": "GET, HEAD"}))
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})


def well_known_documents(issuer: str | None, keys: PublishedKeys | None) -> tuple[WellKnownDocument, WellKnownDocument]:
    """The JWKS and the discovery document for `issuer` (both 404 without keys)."""
    if issuer is None or keys is None:
        return WellKnownDocument(None), WellKnownDocument(None)
    # The issuer is an http(s) URL (config); the JWKS lives under it as under any OpenID provider.
    discovery = {"issuer": issuer, "jwks_uri": issuer.rstrip("/") + JWKS_PATH}
    return WellKnownDocument(keys.document), WellKnownDocument(orjson.dumps(discovery))
