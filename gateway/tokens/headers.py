"""Which of the gateway's tokens an upstream request carries, made from `[tokens]` at start-up.

- every ChatKit and upload request: `X-ChatKit-Assertion` (when `assertion_audience` is set);
- every ChatKit request (not uploads, which no tool sees): `X-ChatKit-Token-{name}` for each
  `[[tokens.resources]]` entry, minted or exchanged.

The client can never send these itself: upstream request headers pass an allowlist
(`gateway/outbound.py`) that names none of them. They never go into `metadata` or a log line.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ..auth.verify import Principal
from ..clock import Clock
from ..config import ConfigError, TokensConfig
from ..headers import Headers
from ..identity import Identity
from .exchange import TokenExchange, exchange_client
from .mint import Minter, body_digest
from .signing import KeyRefused, PublishedKeys, load_key_file, load_signing_key

__all__ = ["ASSERTION_HEADER", "TOOL_TOKEN_HEADER_PREFIX", "TokenHeaders"]

ASSERTION_HEADER = b"x-chatkit-assertion"
TOOL_TOKEN_HEADER_PREFIX = b"x-chatkit-token-"


class TokenHeaders:
    """The signing key, the published key set, the minter and the exchanges; `ConfigError` at
    start-up for a key or secret that cannot be used."""

    def __init__(
        self,
        config: TokensConfig,
        clock: Clock,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_exchange: Callable[[str, str], None] | None = None,
    ) -> None:
        assert config.signing_key_file is not None and config.issuer is not None
        try:
            key = load_signing_key(config.signing_key_file)
            previous = [
                load_key_file(path, f"tokens.previous_key_files[{index}]")
                for index, path in enumerate(config.previous_key_files)
            ]
        except KeyRefused as exc:
            raise ConfigError(str(exc)) from None
        self.published = PublishedKeys.of(key, previous)
        self.minter = Minter(config, key, clock)
        self.assertions = config.assertion_audience is not None
        self._minted = [r for r in config.resources if r.mode == "mint"]
        self._minted_names = [TOOL_TOKEN_HEADER_PREFIX + r.name.encode("ascii") for r in self._minted]
        self._exchanges = [
            (TOOL_TOKEN_HEADER_PREFIX + r.name.encode("ascii"), TokenExchange(r, clock, config.cache_size, on_exchange))
            for r in config.resources
            if r.mode == "exchange"
        ]
        # The exchanges' one HTTP client, made with the app and closed by its lifespan.
        self.client = exchange_client(transport) if self._exchanges else None

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _assertion(
        self, principal: Principal, identity: Identity, request_id: str, digest: str | None
    ) -> tuple[bytes, bytes]:
        token = self.minter.assertion(
            identity.user_id, identity.name, identity.email, principal.issuer, request_id, digest
        )
        return ASSERTION_HEADER, token.encode("ascii")

    async def chatkit_headers(
        self, principal: Principal, identity: Identity, request_id: str, body: bytes, digest: str | None = None
    ) -> Headers:
        """The tokens of one upstream ChatKit request whose body is exactly `body` (`digest`: its
        `body_digest`, when the caller has it already).

        Raises `TokenExchangeFailed` when an exchanged token cannot be had."""
        result: Headers = []
        if self.assertions:
            result.append(self._assertion(principal, identity, request_id, digest or body_digest(body)))
        minter, user_id = self.minter, identity.user_id
        for header, resource in zip(self._minted_names, self._minted, strict=True):
            result.append((header, minter.tool_token(user_id, resource).encode("ascii")))
        if self._exchanges:
            client = self.client
            if client is None:
                raise RuntimeError("the gateway's lifespan has not started")
            for header, exchange in self._exchanges:
                result.append((header, (await exchange.token_for(client, principal.token)).encode("ascii")))
        return result

    def upload_headers(self, principal: Principal, identity: Identity, request_id: str) -> Headers:
        """The tokens of one upload: the assertion only, without `bodySha256` (the body streams)."""
        if not self.assertions:
            return []
        return [self._assertion(principal, identity, request_id, None)]
