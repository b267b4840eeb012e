"""Cross-site request protection for cookie credentials (docs/security.md, "Cross-site requests").

A browser attaches cookies to requests that other sites make it send; it does not attach a bearer
header on its own. So a cookie-authenticated request must come from an allowed origin: its
`Origin`, or when absent the origin of its `Referer`. Neither, or `Origin: null` (sandboxed
frames, some redirects), is refused.

Allowed origins are `security.allowed_origins` plus `cors.allow_origins`. When
`security.allowed_origins` is empty, the gateway's own origin (the request's `Host`, which a
browser sets and a page cannot) is allowed, so a same-origin deployment works unconfigured.

An `Origin` is exactly `scheme://host[:port]` (RFC 6454 7.1): a value with userinfo, a path, a
query or a fragment (`https://evil.example@app.example.com`) is never sent by a browser, and a
lenient parse of it could find an allowed host in it; it is refused whatever it contains. A
`Referer` with userinfo (which browsers strip, Fetch "strip url for use as a referrer") is
likewise refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..config import GatewayConfig
from ..errors import OriginNotAllowed
from ..headers import header_value

__all__ = ["OriginPolicy", "origin_of"]

# `scheme "://" host [ ":" port ]` and nothing else: no `@`, `/`, `?`, `#`, `\` or space.
SERIALIZED_ORIGIN = re.compile(r"https?://[^@/?#\\\s]+", re.IGNORECASE)


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]`, lower-cased, of an http(s) URL; None otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme}://{host}{suffix}"


class OriginPolicy:
    def __init__(self, config: GatewayConfig) -> None:
        self.allowed = frozenset(config.security.allowed_origins) | frozenset(config.cors.allow_origins)
        self.same_host = not config.security.allowed_origins

    def request_origin(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The origin a browser says the request comes from (Origin, else Referer), or None."""
        origin = header_value(headers, b"origin")
        if origin is not None:
            return origin.decode("latin-1")
        referer = header_value(headers, b"referer")
        if referer is not None:
            text = referer.decode("latin-1")
            try:
                userinfo = "@" in urlsplit(text).netloc
            except ValueError:
                return "null"
            return "null" if userinfo else origin_of(text) or "null"
        return None

    def check(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Raise `OriginNotAllowed` unless the request comes from an allowed origin."""
        origin = self.request_origin(headers)
        if origin is None or origin == "null":
            raise OriginNotAllowed("Cookie-authenticated requests must come from an allowed origin.")
        normalized = origin_of(origin) if SERIALIZED_ORIGIN.fullmatch(origin) else None
        if normalized is None:
            raise OriginNotAllowed()
        if normalized in self.allowed:
            return
        if self.same_host:
            host = header_value(headers, b"host")
            if host is not None and normalized.split("://", 1)[1] == _host_with_port(
                host.decode("latin-1"), normalized
            ):
                return
        raise OriginNotAllowed()


def _host_with_port(host: str, origin: str) -> str:
    # Host carries the port only when it is not the scheme's default; the origin likewise.
    host = host.strip().lower()
    default = ":443" if origin.startswith("https://") else ":80"
    return host.removesuffix(default)
