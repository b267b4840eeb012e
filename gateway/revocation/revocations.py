"""The revocation feature as the rest of the gateway sees it: one object made in the lifespan.

`check` runs after every successful verification, the verified-token cache's hits included: a few
dict lookups in this replica's list, no I/O. `revoke` and `lift` serve the admin API and the
back-channel logout; `guard` gives each open stream its end conditions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

from ..auth.verify import Principal
from ..clock import Clock
from ..config import RevocationConfig
from ..errors import RevocationUnavailable, TokenRevoked
from .entries import Key, RevocationList, StreamRegistry
from .store import Change, MemoryStore, Once, RevocationStore

__all__ = ["DEFAULT_TTL_SECONDS", "Revocations", "Source"]

logger = logging.getLogger("chatkit_gateway.revocation")

DEFAULT_TTL_SECONDS = 86400.0
Source = Literal["admin", "backchannel"]


class Revocations:
    def __init__(
        self,
        config: RevocationConfig,
        *,
        clock: Clock,
        on_revoked: Callable[[Source, int], None] | None = None,
    ) -> None:
        self.clock = clock
        self.streams = StreamRegistry()
        self.entries = RevocationList(clock, self.streams)
        self._on_revoked = on_revoked
        self.store: RevocationStore
        if config.store == "redis" and config.redis_url:  # the config requires the URL for redis
            from .redis_store import RedisStore

            self.store = RedisStore(config.redis_url, self.entries, clock)
        else:
            self.store = MemoryStore(self.entries, clock)

    async def start(self) -> None:
        await self.store.start()

    async def aclose(self) -> None:
        await self.store.aclose()

    def check(self, principal: Principal, *, bearer: bool = False) -> None:
        """Raise `TokenRevoked` for a token the list refuses; `RevocationUnavailable` (fail
        closed) while the shared list cannot be known to be complete."""
        if not self.store.available:
            raise RevocationUnavailable()
        if self.entries.refuses(principal):
            # RFC 6750 3.1, as for any refused bearer token.
            raise TokenRevoked(headers={"WWW-Authenticate": 'Bearer error="invalid_token"'} if bearer else None)

    async def revoke(
        self,
        keys: Sequence[Key],
        ttl: float,
        *,
        source: Source,
        issued_before: float = math.inf,
        once: Once | None = None,
    ) -> bool:
        """Add the entries (with `once`, only if that name is new: False for a replay)."""
        changes: list[Change] = [(key, ttl, issued_before) for key in keys]
        if not await self.store.add(changes, once=once):
            return False
        logger.info("revoked by %s: %s for %g s", source, ", ".join(key[0] for key in keys), ttl)
        if self._on_revoked is not None:
            self._on_revoked(source, len(keys))
        return True

    async def lift(self, keys: Sequence[Key]) -> None:
        await self.store.remove(keys)
        logger.info("revocation lifted: %s", ", ".join(key[0] for key in keys))
