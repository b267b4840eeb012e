"""Headers as ASGI carries them, and which of the backend's cross back to the client.

What goes upstream (the client headers on an allowlist, the gateway's own, the identity, the
framing) is built in one place, `outbound.py`. Responses come back with everything except
hop-by-hop headers (RFC 9110 7.6.1, including those the `Connection` header names),
`set-cookie`, and the upstream's `server` and `date` (uvicorn adds its own; forwarding them would
send them twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP_HEADERS",
    "Headers",
    "connection_listed",
    "header_value",
    "relay_response_headers",
]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP_HEADERS | {b"set-cookie", b"server", b"date"}
# A `Content-Encoding` is never among them: the bytes relayed are the upstream's, so their label stays.
SSE_REPLACED_HEADERS = frozenset({b"content-length", b"cache-control", b"x-accel-buffering"})
SSE_DROPPED_HEADERS = DROPPED_RESPONSE_HEADERS | SSE_REPLACED_HEADERS  # made once, not per response
SSE_HEADERS: Headers = [(b"cache-control", b"no-cache, no-transform"), (b"x-accel-buffering", b"no")]


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of `name` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names that a `Connection` header marks as hop-by-hop for this message."""
    names: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            names.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return frozenset(names)


def relay_response_headers(headers: Sequence[tuple[bytes, bytes]], *, sse: bool) -> Headers:
    """The upstream's response headers as they go to the client."""
    dropped = SSE_DROPPED_HEADERS if sse else DROPPED_RESPONSE_HEADERS
    listed = connection_listed(headers)
    if listed:
        dropped = dropped | listed
    result = [(key, value) for key, value in headers if key not in dropped]
    if sse:
        result.extend(SSE_HEADERS)
    return result
