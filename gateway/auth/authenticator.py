"""Authentication as the app uses it: credential -> verified `Principal`, and the key caches behind it.

`Authenticator` is made and closed by the app's lifespan. It owns one HTTP client for JWKS and
discovery fetches (never the upstream's), one `JWKSCache` per issuer, and the `TokenVerifier`.
Start-up loads every issuer's keys before the gateway reports ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import httpx

from ..clock import Clock
from ..config import GatewayConfig
from ..errors import AuthError, MissingCredentials
from .credentials import extract_credential
from .jose import check_backend
from .jwks import FetchResult, JWKSCache, JWKSStatus
from .verify import Principal, TokenVerifier

__all__ = ["Authenticator"]


class Authenticator:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None = None,
        on_fetch: Callable[[str, FetchResult], None] | None = None,
    ) -> None:
        check_backend()
        self.auth = config.auth
        jwks = config.auth.jwks
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(jwks.fetch_timeout_seconds),
            limits=httpx.Limits(max_connections=4 * len(config.auth.issuers), max_keepalive_connections=2),
            trust_env=False,
            follow_redirects=False,
        )
        self.caches = {
            issuer.issuer: JWKSCache(issuer, jwks, self._client, clock=clock, on_fetch=on_fetch)
            for issuer in config.auth.issuers
        }
        self.verifier = TokenVerifier(config.auth, self.caches, clock=clock)

    async def start(self) -> None:
        """Load every issuer's keys (failures are recorded and retried in the background)."""
        await asyncio.gather(*(cache.start() for cache in self.caches.values()))

    async def aclose(self) -> None:
        await asyncio.gather(*(cache.aclose() for cache in self.caches.values()))
        await self._client.aclose()

    def status(self) -> list[JWKSStatus]:
        return [cache.status() for cache in self.caches.values()]

    @property
    def ready(self) -> bool:
        return all(cache.status().ready for cache in self.caches.values())

    async def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> Principal:
        """The verified principal, its `source` set; `AuthError` otherwise."""
        try:
            credential = extract_credential(headers, self.auth)
        except AuthError as error:
            raise _for_bearer(error) from None
        if credential is None:
            missing = MissingCredentials()
            if self.auth.bearer:
                missing.headers["WWW-Authenticate"] = 'Bearer realm="chatkit-gateway"'
            raise missing
        try:
            principal = await self.verifier.verify(credential.token)
        except AuthError as error:
            raise (_for_bearer(error) if credential.source == "bearer" else error) from None
        return principal.with_source(credential.source)


def _for_bearer(error: AuthError) -> AuthError:
    # RFC 6750 3.1: a bearer caller is told the token was refused (no detail beyond the code).
    error.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return error
