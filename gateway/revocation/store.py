"""Where revocations are kept: this process only (`memory`) or a Redis server shared by replicas
(`redis`, in `redis_store.py`). Both feed the replica's `RevocationList`, which requests read.

A change is `(key, ttl seconds, issued_before)`: relative lifetimes, so replicas whose clocks
disagree still agree on how long an entry lasts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from ..clock import Clock
from .entries import PRUNE_MIN_ENTRIES, Entry, Key, RevocationList

__all__ = ["Change", "MemoryStore", "Once", "RevocationStore"]

Change = tuple[Key, float, float]  # key, ttl seconds, issued_before
Once = tuple[str, float]  # a name that may be used once, and how long it is remembered


class RevocationStore(Protocol):
    @property
    def available(self) -> bool:
        """Whether the replica's list is known to be complete (else requests fail closed)."""

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...

    async def add(self, changes: Sequence[Change], *, once: Once | None = None) -> bool:
        """Record the entries and apply them here; raises `RevocationUnavailable` when it cannot.

        With `once`, only if that name was not used before within its time (a logout token's
        `jti`), in the same step: False, and nothing recorded, for a replay."""

    async def remove(self, keys: Sequence[Key]) -> None:
        """Lift the entries (absent ones too); raises `RevocationUnavailable` when it cannot."""


class MemoryStore:
    """One process: the list itself is the store."""

    def __init__(self, entries: RevocationList, clock: Clock) -> None:
        self._entries = entries
        self._clock = clock
        self._claimed: dict[str, float] = {}  # name -> lapses at
        self._prune_at = PRUNE_MIN_ENTRIES

    @property
    def available(self) -> bool:
        return True

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...

    async def add(self, changes: Sequence[Change], *, once: Once | None = None) -> bool:
        now = self._clock.time()
        if once is not None and not self._claim(once, now):
            return False
        for key, ttl, issued_before in changes:
            self._entries.put(key, Entry(now + ttl, issued_before))
        return True

    async def remove(self, keys: Sequence[Key]) -> None:
        for key in keys:
            self._entries.discard(key)

    def _claim(self, once: Once, now: float) -> bool:
        name, ttl = once
        if self._claimed.get(name, -math.inf) > now:
            return False
        self._claimed[name] = now + ttl
        if len(self._claimed) >= self._prune_at:
            self._claimed = {k: until for k, until in self._claimed.items() if until > now}
            self._prune_at = max(PRUNE_MIN_ENTRIES, 2 * len(self._claimed))
        return True
