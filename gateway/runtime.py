"""The resources every request shares, made once with the app and started and closed by its
lifespan: the authenticator (and its key caches), the clients to the backend, the rate limiter,
the open streams, the metrics, the gateway's own tokens (`tokens/`); and the drain on `SIGTERM`.

What goes upstream is built by `outbound.py`; the request path itself is in `app.py`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import httpx

from .auth.authenticator import Authenticator
from .auth.origin import OriginPolicy
from .auth.verify import Principal
from .clock import Clock
from .config import GatewayConfig
from .errors import AuthError, UnknownIssuer
from .identity import Identity, identity_of, user_id_prefixes
from .observe import Observer
from .outbound import Outbound
from .ownership import Owners, OwnershipPolicy, open_store
from .ratelimit import RateLimiter
from .revocation.revocations import Revocations
from .revocation.streams import StreamGuard
from .streams import OpenStreams
from .tokens.headers import TokenHeaders
from .upstream import Upstream
from .warmup import warm_request_path

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from .tracing import RequestTrace, Tracing

__all__ = ["Runtime"]

GC_YOUNG_THRESHOLD = 10_000

logger = logging.getLogger("chatkit_gateway")

# While the backend's TLS handshake fails, the warm-up connection is tried again this often.
TLS_RETRY_SECONDS = 3.0


class Runtime:
    """One gateway's shared resources. Made by `create_app`; `start` and `aclose` are the lifespan."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None = None,
        jwks_transport: httpx.AsyncBaseTransport | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.observer = Observer()
        # `[tokens]`: None without a signing key (nothing minted, the /.well-known/ documents 404).
        # First: a key or secret that cannot be used stops start-up before any client is made.
        self.tokens = (
            TokenHeaders(config.tokens, clock, on_exchange=self.observer.token_exchanged)
            if config.tokens.signing_key_file is not None
            else None
        )
        self.outbound = Outbound(config)
        self.tracing: Tracing | None = None
        if config.tracing.enabled:
            from .tracing import Tracing  # OpenTelemetry is imported only when tracing is on

            self.tracing = Tracing(config.tracing, exporter=span_exporter)
        self.origin_policy = OriginPolicy(config)
        self.user_id_prefixes: Mapping[str, str] = user_id_prefixes(config.auth.issuers)
        self.authenticator = Authenticator(
            config, clock=clock, transport=jwks_transport, on_fetch=self.observer.jwks_fetched
        )
        caches = self.authenticator
        self.observer.watch_key_ages(lambda: [(s.issuer, s.last_success_age) for s in caches.status()])
        self.upstream = Upstream(config.upstream, transport=transport)
        self.limiter = RateLimiter.create(config.ratelimit, clock=clock, on_backend_error=self._rate_limit_failed)
        self.streams = OpenStreams(self.observer.open_streams, max_streams=config.upstream.max_streams)
        self.revocations = (
            Revocations(config.revocation, clock=clock, on_revoked=self.observer.revoked)
            if config.revocation.enabled
            else None
        )
        self.ownership: OwnershipPolicy | None = None
        if config.ownership.enabled:
            owners = Owners(
                open_store(config.ownership),
                cache_size=config.ownership.cache_size,
                on_store_error=self.observer.ownership_store_failed,
            )
            self.ownership = OwnershipPolicy(config.ownership, owners)
        self.started = False
        self.draining = False
        self._tls_retry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.limiter.start()
        if self.revocations is not None:
            await self.revocations.start()
        if self.ownership is not None:
            await self.ownership.owners.start()
        await self.authenticator.start()
        await self.upstream.warm()
        if self.upstream.tls_error is not None:
            self._tls_retry = asyncio.ensure_future(self._retry_tls())
        await warm_request_path(self.config, self.outbound)
        self.observer.prepare()
        # Everything made so far lives as long as the process: collect once, then move it out of
        # the collector's sight, so later collections scan only what requests allocate (the
        # first ones would otherwise walk every object made at start-up).
        gc.collect()
        gc.freeze()
        # A collection of the youngest generation every GC_YOUNG_THRESHOLD new container objects
        # rather than CPython's 700: a stream holds some 70 of them for as long as it is open, so
        # thousands of streams opening together made hundreds of young collections and, as the
        # survivors piled up, full ones, which walk every open stream's objects (0.95 s of CPU for
        # 5,000 streams, a third of the time to their first events: docs/performance.md, "Many
        # streams"). The older generations keep their thresholds.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.started = True

    async def _retry_tls(self) -> None:
        """Not ready while the backend's certificate or handshake is refused (a merely unreachable
        backend is no reason: it may come up after the gateway); warm up again until it passes."""
        while self.upstream.tls_error is not None:
            await asyncio.sleep(TLS_RETRY_SECONDS)
            await self.upstream.warm()
        logger.info("upstream TLS handshake succeeded")

    async def aclose(self) -> None:
        self.started = False
        if self._tls_retry is not None:
            self._tls_retry.cancel()
        await self.limiter.aclose()
        if self.revocations is not None:
            await self.revocations.aclose()
        if self.ownership is not None:
            await self.ownership.owners.aclose()
        await self.authenticator.aclose()
        await self.upstream.aclose()
        if self.tracing is not None:
            # Exports what is pending: blocking, so off the event loop.
            await asyncio.to_thread(self.tracing.shutdown)
        if self.tokens is not None:
            await self.tokens.aclose()

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.authenticator.ready and self.upstream.tls_error is None

    async def drain(self, grace: float) -> None:
        """`SIGTERM`: not ready at once; streams may finish for `grace` seconds, then are ended."""
        self.draining = True
        streams = self.streams
        logger.info("draining: %d open streams, grace %g s", streams.count, grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while streams.count > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if streams.count > 0:
            logger.info("grace over: ending %d open streams", streams.count)
            streams.end_all()
            ended = loop.time() + 2.0
            while streams.count > 0 and loop.time() < ended:
                await asyncio.sleep(0.02)

    async def authenticate(
        self, headers: Sequence[tuple[bytes, bytes]], trace: RequestTrace | None = None
    ) -> tuple[Principal, Identity]:
        """Steps 2 and 3 of every request: a verified principal, and the origin check for cookies."""
        if trace is None:
            principal = await self.authenticator.authenticate(headers)
        else:
            principal = await self._authenticate_traced(headers, trace)
        if self.revocations is not None:
            # After verification, so the verified-token cache cannot outlive a revocation.
            self.revocations.check(principal, bearer=principal.source == "bearer")
        if principal.source == "cookie":
            self.origin_policy.check(headers)
        prefix = self.user_id_prefixes.get(principal.issuer)
        if prefix is None:
            # Not one of `auth.issuers` (the verifier returns no other): never a user without a prefix.
            raise UnknownIssuer()
        # Made once per verified token and source (`Principal.derived`): the claims, the identity
        # configuration and the issuer's prefix decide it, nothing of the request.
        key = ("identity", prefix)
        identity: Identity | None = principal.derived.get(key)
        if identity is None:
            identity = identity_of(principal, self.config.identity, prefix)
            principal.derived[key] = identity
        return principal, identity

    def session_end(self, principal: Principal) -> StreamGuard:
        """`with runtime.session_end(principal) as stop:` for one SSE stream (inside `async with
        runtime.streams`): `stop` completes at the end of the drain's grace, at the token's `exp`
        plus `auth.stream_grace_seconds`, or at a revocation that names the token (docs/revocation.md)."""
        grace = self.config.auth.stream_grace_seconds
        revocations = self.revocations
        registry = revocations.streams if revocations is not None else None
        guard = StreamGuard(principal, grace=grace, clock=self.clock, streams=self.streams, registry=registry)
        if revocations is None:
            return guard
        try:
            # Watched from here on; an entry that arrived since the request's check refuses it now.
            revocations.check(principal, bearer=principal.source == "bearer")
        except BaseException:
            guard.close()
            raise
        return guard

    async def _authenticate_traced(self, headers: Sequence[tuple[bytes, bytes]], trace: RequestTrace) -> Principal:
        """`authenticate` inside a "verify token" span that says whether the cache answered."""
        verifier = self.authenticator.verifier
        span = trace.verify_span()
        misses = verifier.misses
        try:
            return await self.authenticator.authenticate(headers)
        except AuthError as error:
            span.set_attribute("error.type", error.code)
            raise
        finally:
            # A cache hit never suspends, so no other request can count a miss in between; a
            # miss counts itself before its first await.
            span.set_attribute("chatkit.token_cache_hit", verifier.misses == misses)
            span.end()

    def _rate_limit_failed(self, reason: str) -> None:
        self.observer.ratelimit_backend_errors.inc()
