"""Which headers cross the gateway, in each direction.

Requests go upstream through an allowlist (SPEC 6): nothing the client sends reaches the backend
unless it is named here, so hop-by-hop headers, cookies, `Authorization` and any identity header a
client might forge are dropped by construction. The gateway then adds its own `X-Request-Id`,
`X-Forwarded-*` and identity headers. Responses come back with everything except hop-by-hop headers
(RFC 9110 7.6.1, including those the `Connection` header names), `set-cookie`, and the upstream's
`server` and `date` (uvicorn adds its own; forwarding them would send them twice).
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "FORWARDED_BODY_HEADERS",
    "FORWARDED_REQUEST_HEADERS",
    "FORWARDED_UPLOAD_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "Headers",
    "TrustedProxies",
    "connection_listed",
    "forwarded_headers",
    "header_value",
    "relay_response_headers",
    "request_id_from",
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
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        b"content-type",
        b"accept",
        b"accept-language",
        b"user-agent",
        b"chatkit-frame-instance-id",
        b"traceparent",
        b"tracestate",
    }
)
# For a body the gateway re-encodes (the ChatKit JSON), the content type is the gateway's own.
FORWARDED_BODY_HEADERS = FORWARDED_REQUEST_HEADERS - {b"content-type"}
# An upload's body goes on byte for byte, so the coding the client applied to it (RFC 9110 8.4)
# must go with it, or the backend stores compressed bytes as if they were the file.
FORWARDED_UPLOAD_HEADERS = FORWARDED_REQUEST_HEADERS | {b"content-encoding"}
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP_HEADERS | {b"set-cookie", b"server", b"date"}
SSE_REPLACED_HEADERS = frozenset({b"content-length", b"cache-control", b"x-accel-buffering", b"content-encoding"})
SSE_HEADERS: Headers = [(b"cache-control", b"no-cache, no-transform"), (b"x-accel-buffering", b"no")]
REQUEST_ID_PATTERN = re.compile(rb"[A-Za-z0-9._-]{1,128}")


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


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-Id` when well formed (SPEC 10), else a new one."""
    value = header_value(headers, b"x-request-id")
    if value is not None and REQUEST_ID_PATTERN.fullmatch(value):
        return value.decode("ascii")
    # Unique, not secret (a client may choose its own): no system call per request for it.
    return f"{random.getrandbits(128):032x}"


class TrustedProxies:
    """`server.trusted_proxies`: peers whose `X-Forwarded-*` headers the gateway believes."""

    def __init__(self, networks: Sequence[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(item, strict=False) for item in networks)

    def __contains__(self, address: str | None) -> bool:
        if not self._networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


def forwarded_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    peer: str | None,
    scheme: str,
    trusted: TrustedProxies,
) -> Headers:
    """`X-Forwarded-For/-Proto/-Host` as the gateway sees the connection.

    A client's own copies are believed only when the peer is a trusted proxy; otherwise they are
    replaced, so a client cannot make the backend log or trust an address it chose.
    """
    host = header_value(headers, b"host") or b""
    peer_bytes = (peer or "").encode("ascii", "replace")
    if peer in trusted:
        prior_for = b", ".join(value for key, value in headers if key == b"x-forwarded-for")
        forwarded_for = prior_for + b", " + peer_bytes if prior_for else peer_bytes
        proto = header_value(headers, b"x-forwarded-proto") or scheme.encode("ascii")
        host = header_value(headers, b"x-forwarded-host") or host
    else:
        forwarded_for = peer_bytes
        proto = scheme.encode("ascii")
    result = [(b"x-forwarded-for", forwarded_for), (b"x-forwarded-proto", proto)]
    if host:
        result.append((b"x-forwarded-host", host))
    return result


def upstream_request_headers(headers: Sequence[tuple[bytes, bytes]], *, allow: frozenset[bytes]) -> Headers:
    """The client's headers that may go upstream: allowlisted and not made hop-by-hop by `Connection`."""
    listed = connection_listed(headers)
    return [(key, value) for key, value in headers if key in allow and key not in listed]


def relay_response_headers(headers: Sequence[tuple[bytes, bytes]], *, sse: bool) -> Headers:
    """The upstream's response headers as they go to the client."""
    listed = connection_listed(headers)
    dropped = DROPPED_RESPONSE_HEADERS | listed
    if sse:
        dropped = dropped | SSE_REPLACED_HEADERS
    result = [(key, value) for key, value in headers if key not in dropped]
    if sse:
        result.extend(SSE_HEADERS)
    return result
