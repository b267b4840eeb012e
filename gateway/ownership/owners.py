"""The owner records as the request path uses them: a store behind an in-process cache.

Owners never change: a record is made once and only ever removed (when its thread or attachment
is deleted). So a positive answer, `id -> owner`, may be cached for as long as the process lives,
and a cached check costs a dict lookup; only ids not yet seen by this process reach the store.
Absent records are not cached for checks: another replica may record the id a moment later, and
its owner must get in at once. Listing alone remembers an absence, for `ABSENT_SECONDS`: a
`threads.list` answer names the same threads over and over, and threads made outside the gateway
have no owner until one presents their id, so without it every list would reach the store. The
price is that a thread recorded on another replica within those seconds can be missing from its
owner's list on this one for that long (it is never shown to anyone else).

Deletion and the cache: a replica evicts its own entry when it relays a successful delete; other
replicas keep theirs until it falls out of their cache. That entry still names the id's one and
only owner, so the stale answer can only let that owner reach an id the backend no longer has (the
backend answers "not found") and keep others out, on that replica, of an id that nobody owns any
more. Backends that reuse ids would need more; ChatKit's are random.

A failure of the store is reported (a callback for the metric, a warning at most every few
seconds) and raised as `OwnershipUnavailable` (503): requests that need the store fail closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

from gateway.errors import OwnershipUnavailable

from .store import OwnerStore, StoreUnavailable

__all__ = ["Owners"]

logger = logging.getLogger("chatkit_gateway.ownership")

WARNING_INTERVAL_SECONDS = 5.0
ABSENT_SECONDS = 5.0
# A shared ping's answer when the caller whose ping it was gave up before it came.
_ASK_AGAIN = StoreUnavailable("ping abandoned", "the caller whose ping it was gave up")


class Owners:
    """Lookups and records of owners, cached; the store's failures become `OwnershipUnavailable`."""

    def __init__(
        self, store: OwnerStore, *, cache_size: int, on_store_error: Callable[[str], None] | None = None
    ) -> None:
        self.store = store
        self._cache: dict[str, str] = {}
        self._absent: dict[str, float] = {}  # id -> monotonic time until which it counts as unowned
        self._cache_size = cache_size
        self._on_store_error = on_store_error
        self._next_warning = -math.inf
        # While a ping is on its way: the answers owed to those sharing it (`reach`).
        self._reaching: list[asyncio.Future[StoreUnavailable | None]] | None = None

    def cached(self, item_id: str) -> str | None:
        return self._cache.get(item_id)

    def _remember(self, item_id: str, owner: str) -> None:
        if not self._cache_size:
            return
        if len(self._cache) >= self._cache_size:
            # Oldest first (dicts keep insertion order): O(1), and a hot id that falls out is
            # fetched again from the store once.
            del self._cache[next(iter(self._cache))]
        self._cache[item_id] = owner
        self._absent.pop(item_id, None)

    def _remember_absent(self, item_id: str, until: float) -> None:
        if not self._cache_size:
            return
        if len(self._absent) >= self._cache_size:
            del self._absent[next(iter(self._absent))]
        self._absent[item_id] = until

    def _failed(self, error: StoreUnavailable, during: str) -> OwnershipUnavailable:
        if self._on_store_error is not None:
            self._on_store_error(error.reason)
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARNING_INTERVAL_SECONDS
            logger.warning("ownership store (%s) failed during %s: %s", self.store.name, during, error)
        return OwnershipUnavailable()

    async def start(self) -> None:
        """Connect; an unreachable store is reported, and readiness says so until it answers."""
        try:
            await self.store.start()
        except StoreUnavailable as error:
            self._failed(error, "start")

    async def aclose(self) -> None:
        await self.store.aclose()

    async def reach(self) -> None:
        """Raise `OwnershipUnavailable` unless the store answers now.

        Whoever asks while a ping is on its way shares that ping's answer, which comes after they
        asked: creations that arrive together (a burst of new chats) cost the store one ping per
        round trip, not one each. If the caller whose ping it is gives up (its client left), those
        sharing it ask again."""
        while (sharing := self._reaching) is not None:
            answer: asyncio.Future[StoreUnavailable | None] = asyncio.get_running_loop().create_future()
            sharing.append(answer)
            error = await answer
            if error is not _ASK_AGAIN:
                break
        else:
            error = await self._ping()
        if error is not None:
            raise self._failed(error, "ping") from None

    async def _ping(self) -> StoreUnavailable | None:
        """One ping, its answer given to those who asked meanwhile (`reach`)."""
        sharing: list[asyncio.Future[StoreUnavailable | None]] = []
        self._reaching = sharing
        answer: StoreUnavailable | None = _ASK_AGAIN
        try:
            await self.store.ping()
            answer = None
        except StoreUnavailable as error:
            answer = error
        finally:
            self._reaching = None
            for waiting in sharing:
                if not waiting.done():
                    waiting.set_result(answer)
        return answer

    async def problem(self) -> str | None:
        """For readiness: why the store cannot be used now, or None."""
        try:
            await self.store.ping()
        except StoreUnavailable as error:
            self._failed(error, "readiness check")
            return f"the ownership store ({self.store.name}) cannot be reached"
        return None

    async def owners_of(self, ids: Sequence[str], *, for_listing: bool = False) -> dict[str, str]:
        """The recorded owners of those of `ids` that have one. `for_listing`: an id found unowned
        a moment ago counts as unowned still (see the module's docstring)."""
        found: dict[str, str] = {}
        missing: list[str] = []
        now = time.monotonic()
        for item_id in ids:
            owner = self._cache.get(item_id)
            if owner is not None:
                found[item_id] = owner
            elif not (for_listing and self._absent.get(item_id, 0.0) > now):
                missing.append(item_id)
        if missing:
            try:
                stored = await self.store.owners(missing)
            except StoreUnavailable as error:
                raise self._failed(error, "lookup") from None
            for item_id, owner in stored.items():
                self._remember(item_id, owner)
            found.update(stored)
            if for_listing:
                for item_id in missing:
                    if item_id not in stored:
                        self._remember_absent(item_id, now + ABSENT_SECONDS)
        return found

    async def claim(self, item_id: str, user_id: str) -> str:
        """Record `user_id` as the owner unless the id has one; the owner on record after."""
        owner = self._cache.get(item_id)
        if owner is not None:
            return owner
        try:
            owner = await self.store.claim(item_id, user_id)
        except StoreUnavailable as error:
            raise self._failed(error, "record") from None
        if owner == user_id:
            owner = user_id  # the caller's string, not a copy per cached record
        self._remember(item_id, owner)
        return owner

    async def release(self, item_id: str, user_id: str) -> None:
        """Forget the record of a deleted id (best effort: a record left behind names its owner still)."""
        self._cache.pop(item_id, None)
        try:
            await self.store.release(item_id, user_id)
        except StoreUnavailable as error:
            self._failed(error, "removal")
