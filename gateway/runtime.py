"""What the lifespan makes and closes: the resources every request shares, and the steps they serve."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from starlette.types import Scope

from .auth.authenticator import Authenticator
from .auth.origin import OriginPolicy
from .auth.verify import Principal
from .backend import IDENTITY_HEADER, sign_identity
from .clock import Clock
from .config import GatewayConfig
from .errors import UnknownIssuer
from .headers import (
    FORWARDED_REQUEST_HEADERS,
    Headers,
    TrustedProxies,
    forwarded_headers,
    header_value,
    upstream_request_headers,
)
from .identity import Identity, identity_of, user_id_prefixes
from .observe import Observer
from .ownership import Owners, OwnershipPolicy, open_store
from .pagecontext import PageContextPolicy
from .ratelimit import RateLimiter
from .relay import Upstream

__all__ = ["Runtime"]

logger = logging.getLogger("chatkit_gateway")


@dataclass
class Runtime:
    config: GatewayConfig
    clock: Clock
    transport: httpx.AsyncBaseTransport | None = None
    jwks_transport: httpx.AsyncBaseTransport | None = None
    trusted_proxies: TrustedProxies = field(init=False)
    origin_policy: OriginPolicy = field(init=False)
    page_context: PageContextPolicy = field(init=False)
    user_id_prefixes: Mapping[str, str] = field(init=False)
    upstream: Upstream | None = None
    authenticator: Authenticator | None = None
    limiter: RateLimiter | None = None
    ownership: OwnershipPolicy | None = None
    observer: Observer = field(init=False)
    started: bool = False
    draining: bool = False
    open_streams: int = 0
    _stop: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        self.observer = Observer()
        self.trusted_proxies = TrustedProxies(self.config.server.trusted_proxies)
        self.origin_policy = OriginPolicy(self.config)
        self.page_context = PageContextPolicy(self.config.metadata, frozenset(self.config.security.allowed_origins))
        self.user_id_prefixes = user_id_prefixes(self.config.auth.issuers)

    async def start(self) -> None:
        self._stop = asyncio.get_running_loop().create_future()
        self.authenticator = Authenticator(
            self.config, clock=self.clock, transport=self.jwks_transport, on_fetch=self.observer.jwks_fetched
        )
        authenticator = self.authenticator
        self.observer.watch_key_ages(lambda: [(s.issuer, s.last_success_age) for s in authenticator.status()])
        self.upstream = Upstream(self.config.upstream, transport=self.transport)
        self.limiter = RateLimiter.create(
            self.config.ratelimit, clock=self.clock, on_backend_error=self._rate_limit_backend_failed
        )
        await self.limiter.start()
        if self.config.ownership.enabled:
            owners = Owners(
                open_store(self.config.ownership),
                cache_size=self.config.ownership.cache_size,
                on_store_error=self.observer.ownership_store_failed,
            )
            self.ownership = OwnershipPolicy(self.config.ownership, owners)
            await owners.start()
        await self.authenticator.start()
        await self.upstream.warm()
        from .warmup import warm_request_path  # it builds on this module

        await warm_request_path(self)
        self.observer.prepare()
        # Everything made so far lives as long as the process: collect once, then move it out of
        # the collector's sight, so later collections scan only what requests allocate (the
        # first ones would otherwise walk every object made at start-up).
        gc.collect()
        gc.freeze()
        self.started = True

    @property
    def stop(self) -> asyncio.Future[None] | None:
        """Completes when the shutdown grace is over: open streams end with an error event."""
        return self._stop

    async def drain(self, grace: float) -> None:
        """`SIGTERM`: not ready at once; streams may finish for `grace` seconds, then are ended."""
        self.draining = True
        logger.info("draining: %d open streams, grace %g s", self.open_streams, grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.open_streams > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.open_streams > 0:
            logger.info("grace over: ending %d open streams", self.open_streams)
            if self._stop is not None and not self._stop.done():
                self._stop.set_result(None)
            ended = loop.time() + 2.0
            while self.open_streams > 0 and loop.time() < ended:
                await asyncio.sleep(0.02)

    def _rate_limit_backend_failed(self, reason: str) -> None:
        self.observer.ratelimit_backend_errors.inc()

    def limiter_or_fail(self) -> RateLimiter:
        if self.limiter is None:
            raise RuntimeError("the gateway's lifespan has not started")
        return self.limiter

    async def aclose(self) -> None:
        self.started = False
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.ownership is not None:
            await self.ownership.owners.aclose()
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
        prefix = self.user_id_prefixes.get(principal.issuer)
        if prefix is None:
            # Not one of `auth.issuers` (the verifier returns no other): never a user without a prefix.
            raise UnknownIssuer()
        return principal, identity_of(principal, self.config.identity, prefix)

    def base_headers(
        self, scope: Scope, request_id: str, *, allow: frozenset[bytes] = FORWARDED_REQUEST_HEADERS
    ) -> Headers:
        """Headers every upstream request carries: the allowlisted client headers plus the gateway's."""
        headers: Headers = scope["headers"]
        client = scope.get("client")
        result = upstream_request_headers(headers, allow=allow)
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
        """Step 6: what the gateway writes into `metadata` (SPEC 5)."""
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
    ) -> Headers:
        """`X-User-Id`, `X-User-Email`, the signed `X-ChatKit-Identity`, the forwarded token.

        The signature covers what the gateway wrote into the body (`metadata`, from
        `injected_metadata`), the token's issuer, and the SHA-256 of `body`, the exact bytes sent
        upstream, so a captured header cannot vouch for another request. An upload, whose body
        streams, has no `metadata` or `body`: its hash is null.
        """
        result = identity.headers()
        secret = self.config.upstream.identity_secret
        if secret is not None:
            if metadata is None:
                metadata = {"userId": identity.user_id, "userInfo": identity.user_info(), "requestId": request_id}
            signed = sign_identity({**metadata, "issuer": identity.issuer}, secret, body=body)
            result.append((IDENTITY_HEADER.lower().encode("ascii"), signed.encode("ascii")))
        if self.config.upstream.forward_access_token:
            result.append((b"authorization", b"Bearer " + principal.token.encode("ascii")))
        return result
