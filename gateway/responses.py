"""Answers the gateway writes itself (not relayed): JSON errors, straight onto ASGI `send`."""

from __future__ import annotations

from starlette.types import Send

from .errors import GatewayError, error_body
from .headers import Headers

__all__ = ["JSON_HEADERS", "send_error"]

# A body that was too slow or too large is still (maybe) arriving: reading it to keep the
# connection would serve the client that sent it, so the connection ends (RFC 9110 15.5.9).
CLOSE_AFTER = frozenset({408, 413})
JSON_HEADERS: Headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


async def send_error(send: Send, error: GatewayError, request_id: str | None = None) -> None:
    """Send `error` as `{"error": {"code", "message"}}` with its status and headers."""
    body = error_body(error)
    # Its length known, the answer is not chunked (and leaves with its head in one write: protocol.py).
    headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body))]
    headers.extend((key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in error.headers.items())
    if request_id:
        headers.append((b"x-request-id", request_id.encode("ascii")))
    if error.status in CLOSE_AFTER:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
