"""Everything the gateway sends upstream, built in one place.

A request goes to the backend with:

- the client's headers on an allowlist (docs/security.md): nothing the client sends reaches the
  backend unless it is named here, so hop-by-hop headers, cookies, `Authorization` and any
  identity header a client might forge are dropped by construction;
- the gateway's own: `X-Request-Id` (the client's when well formed, docs/metadata.md),
  `Accept-Encoding: identity`, and `X-Forwarded-For/-Proto/-Host` as the gateway sees the
  connection;
- the identity: `X-User-Id`, `X-User-Email`, the signed `X-ChatKit-Identity` (bound to the body it
  travels with) and, when configured, the verified token as `Authorization`;
- for the ChatKit body, the `metadata` the gateway writes into it (`injected_metadata`) and its
  own `Content-Type`; for an upload, the client's `Content-Length` and a default `Content-Type`;
- the framing: `Host` and `Content-Length` of a body in hand (`framed_request`);
- with `[tokens]`, the gateway's own tokens (`X-ChatKit-Assertion`, `X-ChatKit-Token-{name}`),
  made by `tokens/headers.py` and added by the endpoints after these (an exchange at the IdP is
  awaited, and may refuse the request).

`Outbound` holds what one configuration needs for this, made once at start-up.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence

import httpx
from starlette.types import Scope

from .auth.verify import Principal
from .backend_sdk import IDENTITY_HEADER, sign_identity
from .config import GatewayConfig
from .headers import Headers, connection_listed, header_value
from .identity import Identity
from .pagecontext import PageContextPolicy

__all__ = [
    "FORWARDED_BODY_HEADERS",
    "FORWARDED_REQUEST_HEADERS",
    "FORWARDED_UPLOAD_HEADERS",
    "Outbound",
    "TrustedProxies",
    "forwarded_headers",
    "framed_headers",
    "framed_request",
    "request_id_from",
    "upstream_request_headers",
]

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
# The W3C trace-context headers (https://www.w3.org/TR/trace-context/): with tracing on, the
# gateway's own replace the client's (`tracing.py`); with tracing off, the client's pass.
TRACE_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate"})
# For a body the gateway re-encodes (the ChatKit JSON), the content type is the gateway's own.
FORWARDED_BODY_HEADERS = FORWARDED_REQUEST_HEADERS - {b"content-type"}
# An upload's body goes on byte for byte, so the coding the client applied to it (RFC 9110 8.4)
# must go with it, or the backend stores compressed bytes as if they were the file.
FORWARDED_UPLOAD_HEADERS = FORWARDED_REQUEST_HEADERS | {b"content-encoding"}
REQUEST_ID_PATTERN = re.compile(rb"[A-Za-z0-9._-]{1,128}")
JSON_CONTENT_TYPE = (b"content-type", b"application/json")
OCTET_STREAM = (b"content-type", b"application/octet-stream")
IDENTITY_HEADER_NAME = IDENTITY_HEADER.lower().encode("ascii")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-Id` when well formed (docs/metadata.md), else a new one."""
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


class Outbound:
    """The upstream request of one configuration: what each endpoint sends, built per request from
    parts made once."""

    def __init__(self, config: GatewayConfig) -> None:
        self.trusted_proxies = TrustedProxies(config.server.trusted_proxies)
        self.page_context = PageContextPolicy(config.metadata, frozenset(config.security.allowed_origins))
        self.identity_secret = config.upstream.identity_secret
        self.forward_access_token = config.upstream.forward_access_token
        # The client allowlists of this configuration, made once.
        dropped = TRACE_CONTEXT_HEADERS if config.tracing.enabled else frozenset()
        self.request_allow = FORWARDED_REQUEST_HEADERS - dropped
        self.body_allow = FORWARDED_BODY_HEADERS - dropped
        self.upload_allow = FORWARDED_UPLOAD_HEADERS - dropped

    def chatkit_headers(
        self,
        scope: Scope,
        request_id: str,
        principal: Principal,
        identity: Identity,
        *,
        metadata: Mapping[str, object],
        body: bytes,
        body_digest: str | None = None,
    ) -> Headers:
        """The headers of the rewritten ChatKit request. The body was re-encoded: it goes upstream
        as what it now is, whatever the client said (a charset, a second Content-Type, one named
        in Connection). `body_digest`: the body's SHA-256, when the caller has it already."""
        result = self.base_headers(scope, request_id, allow=self.body_allow)
        result.append(JSON_CONTENT_TYPE)
        result.extend(
            self.identity_headers(
                principal, identity, request_id, metadata=metadata, body=body, body_digest=body_digest
            )
        )
        return result

    def upload_headers(
        self, scope: Scope, request_id: str, principal: Principal, identity: Identity, declared_length: int | None
    ) -> Headers:
        """The headers of an upload, whose body streams on as it arrives."""
        result = self.base_headers(scope, request_id, allow=self.upload_allow)
        result.extend(self.identity_headers(principal, identity, request_id))
        if declared_length is not None:
            result.append((b"content-length", str(declared_length).encode("ascii")))
        if header_value(result, b"content-type") is None:
            result.append(OCTET_STREAM)
        return result

    def base_headers(self, scope: Scope, request_id: str, *, allow: frozenset[bytes] | None = None) -> Headers:
        """Headers every upstream request carries: the allowlisted client headers plus the gateway's."""
        headers: Headers = scope["headers"]
        client = scope.get("client")
        result = upstream_request_headers(headers, allow=self.request_allow if allow is None else allow)
        result.append((b"x-request-id", request_id.encode("ascii")))
        result.append((b"accept-encoding", b"identity"))
        result.extend(
            forwarded_headers(
                headers, peer=client[0] if client else None, scheme=scope["scheme"], trusted=self.trusted_proxies
            )
        )
        return result

    def injected_metadata(
        self, headers: Sequence[tuple[bytes, bytes]], client_metadata: object, identity: Identity, request_id: str
    ) -> dict[str, object]:
        """What the gateway writes into the ChatKit body's `metadata` (docs/metadata.md)."""
        client_page_context = client_metadata.get("pageContext") if isinstance(client_metadata, dict) else None
        page_context = self.page_context.from_request(
            header_value(headers, self.page_context.header_name), client_page_context, header_value(headers, b"referer")
        )
        injected: dict[str, object] = {"userId": identity.user_id, "userInfo": identity.user_info()}
        if page_context is not None:
            injected["pageContext"] = page_context
        injected["requestId"] = request_id
        return injected

    def identity_headers(
        self,
        principal: Principal,
        identity: Identity,
        request_id: str,
        *,
        metadata: Mapping[str, object] | None = None,
        body: bytes | None = None,
        body_digest: str | None = None,
    ) -> Headers:
        """`X-User-Id`, `X-User-Email`, the signed `X-ChatKit-Identity`, the forwarded token.

        The signature covers what the gateway wrote into the body (`metadata`, from
        `injected_metadata`), the token's issuer, and the SHA-256 of `body`, the exact bytes sent
        upstream, so a captured header cannot vouch for another request. An upload, whose body
        streams, has no `metadata` or `body`: its hash is null.
        """
        result = identity.headers()
        secret = self.identity_secret
        if secret is not None:
            if metadata is None:
                metadata = {"userId": identity.user_id, "userInfo": identity.user_info(), "requestId": request_id}
            signed = sign_identity({**metadata, "issuer": identity.issuer}, secret, body=body, body_digest=body_digest)
            result.append((IDENTITY_HEADER_NAME, signed.encode("ascii")))
        if self.forward_access_token:
            result.append((b"authorization", b"Bearer " + principal.token.encode("ascii")))
        return result


def framed_headers(method: str, headers: Headers, content: bytes, *, host: bytes) -> Headers:
    """The headers of a request whose body is in hand, framed: `Host` first, the gateway's headers
    as given, then the body's `Content-Length` (for any body, and for an empty one where the
    method defines a body, as httpx frames it: RFC 9110 8.6)."""
    framed = [(b"host", host), *headers]
    if content or method in BODY_METHODS:
        framed.append((b"content-length", b"%d" % len(content)))
    return framed


def framed_request(
    method: str,
    url: httpx.URL,
    headers: Headers,
    content: bytes | AsyncIterable[bytes],
    extensions: dict[str, object],
    *,
    host: bytes,
) -> httpx.Request:
    """The request as httpx sends it, made directly rather than by `client.build_request`: no
    client defaults to merge, so the backend gets exactly the headers the gateway chose.

    A body in hand (every ChatKit JSON request) gets its `Host` and `Content-Length` here and goes
    as a `ByteStream`, which skips httpx's header-defaults pass (docs/BENCHMARKS.md, "Measured
    design choices"); a streamed body (uploads) is framed by httpx.
    """
    if isinstance(content, bytes):
        framed = framed_headers(method, headers, content, host=host)
        request = httpx.Request(method, url, headers=framed, stream=httpx.ByteStream(content), extensions=extensions)
        request.read()  # `request.content` readable, as for any request httpx builds with a body
        return request
    return httpx.Request(method, url, headers=headers, content=content, extensions=extensions)
