"""What the lifespan makes and closes: the resources every request shares, and the steps they serve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from starlette.types import Scope

from .auth.authenticator import Authenticator
from .auth.origin import OriginPolicy
from .auth.verify import Principal
from .clock import Clock
from .config import GatewayConfig
from .headers import FORWARDED_REQUEST_HEADERS, Headers, TrustedProxies, forwarded_headers, upstream_request_headers
from .identity import Identity, identity_of
from .relay import Upstream

__all__ = ["Runtime"]


@dataclass
class Runtime:
    config: GatewayConfig
    clock: Clock
    transport: httpx.AsyncBaseTransport | None = None
    jwks_transport: httpx.AsyncBaseTransport | None = None
    trusted_proxies: TrustedProxies = field(init=False)
    origin_policy: OriginPolicy = field(init=False)
    upstream: Upstream | None = None
    authenticator: Authenticator | None = None
    started: bool = False
    draining: bool = False

    def __post_init__(self) -> None:
        self.trusted_proxies = TrustedProxies(self.config.server.trusted_proxies)
        self.origin_policy = OriginPolicy(self.config)

    async def start(self) -> None:
        self.authenticator = Authenticator(self.config, clock=self.clock, transport=self.jwks_transport)
        self.upstream = Upstream(self.config.upstream, transport=self.transport)
        await self.authenticator.start()
        await self.upstream.warm()
        self.started = True

    async def aclose(self) -> None:
        self.started = False
        if self.authenticator is not None:
            await self.authenticator.aclose()
        if self.upstream is not None:
            await self.upstream.aclose()

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.authenticator is not None and self.authenticator.ready

    def upstream_or_fail(self) -> Upstream:
        if self.upstream is None:
            raise RuntimeError("the gateway's lifespan has not started")
        return self.upstream

    async def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[Principal, Identity]:
        """Steps 2 and 3 of every request: a verified principal, and the origin check for cookies."""
        if self.authenticator is None:
            raise RuntimeError("the gateway's lifespan has not started")
        principal = await self.authenticator.authenticate(headers)
        if principal.source == "cookie":
            self.origin_policy.check(headers)
        return principal, identity_of(principal, self.config.identity)

    def base_headers(self, scope: Scope, request_id: str) -> Headers:
        """Headers every upstream request carries: the allowlisted client headers plus the gateway's."""
        headers: Headers = scope["headers"]
        client = scope.get("client")
        result = upstream_request_headers(headers, allow=FORWARDED_REQUEST_HEADERS)
        result.append((b"x-request-id", request_id.encode("ascii")))
        result.append((b"accept-encoding", b"identity"))
        result.extend(
            forwarded_headers(
                headers, peer=client[0] if client else None, scheme=scope["scheme"], trusted=self.trusted_proxies
            )
        )
        return result
