"""The revocation list as each replica holds it: O(1) lookups for a verified token, and the open
streams to end when an entry arrives.

An entry is named by a key, one of

- `("sub", iss, sub)`: every token of that user (an admin revocation, whenever the token was
  issued; a back-channel logout naming only `sub`, tokens issued up to the logout);
- `("sid", iss, sid)`: the tokens of one IdP session (OIDC Back-Channel Logout 1.0 §2.4);
- `("jti", jti)`: one token.

and holds when it lapses and the latest `iat` it refuses (`math.inf`: any). Tuples keep the parts
apart whatever characters they hold; the Redis store writes them as JSON arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..auth.verify import Principal
from ..clock import Clock

__all__ = ["Entry", "Key", "StreamRegistry", "RevocationList", "StreamStopper", "keys_of"]

Key = tuple[str, ...]
PRUNE_MIN_ENTRIES = 1024


@dataclass(frozen=True, slots=True)
class Entry:
    expires_at: float  # wall-clock seconds
    issued_before: float = math.inf  # tokens with `iat` up to this are refused

    def refuses(self, iat: object, now: float) -> bool:
        if self.expires_at <= now:
            return False
        if self.issued_before == math.inf:
            return True
        # A token without a usable `iat` cannot show it was issued after the logout: refused.
        return not isinstance(iat, int | float) or iat <= self.issued_before


def keys_of(principal: Principal) -> Iterator[Key]:
    """The keys under which an entry would refuse this token."""
    claims = principal.claims
    yield ("sub", principal.issuer, principal.subject)
    sid = claims.get("sid")
    if isinstance(sid, str):
        yield ("sid", principal.issuer, sid)
    jti = claims.get("jti")
    if isinstance(jti, str):
        yield ("jti", jti)


class StreamStopper:
    """What the registry needs of one open stream: its token's `iat`, and how to end it."""

    __slots__ = ("iat", "stop")

    def __init__(self, iat: object, stop: Callable[[], None]) -> None:
        self.iat = iat
        self.stop = stop


class StreamRegistry:
    """The open streams of this replica by revocation key, so an entry ends them at once."""

    def __init__(self) -> None:
        self._by_key: dict[Key, set[StreamStopper]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def add(self, keys: Iterable[Key], stopper: StreamStopper) -> None:
        for key in keys:
            self._by_key.setdefault(key, set()).add(stopper)

    def remove(self, keys: Iterable[Key], stopper: StreamStopper) -> None:
        for key in keys:
            streams = self._by_key.get(key)
            if streams is not None:
                streams.discard(stopper)
                if not streams:
                    del self._by_key[key]

    def end_matching(self, key: Key, entry: Entry, now: float) -> int:
        streams = self._by_key.get(key)
        if not streams:
            return 0
        ended = [stream for stream in streams if entry.refuses(stream.iat, now)]
        for stream in ended:
            stream.stop()
        return len(ended)


class RevocationList:
    """Entries by key, each lapsing at its own time; every addition ends the matching open streams."""

    def __init__(self, clock: Clock, streams: StreamRegistry) -> None:
        self._clock = clock
        self._streams = streams
        self._entries: dict[Key, Entry] = {}
        self._prune_at = PRUNE_MIN_ENTRIES

    def __len__(self) -> int:
        return len(self._entries)

    def refuses(self, principal: Principal) -> bool:
        entries = self._entries
        if not entries:
            return False
        now = self._clock.time()
        iat: Any = principal.claims.get("iat")
        for key in keys_of(principal):
            entry = entries.get(key)
            if entry is not None and entry.refuses(iat, now):
                return True
        return False

    def put(self, key: Key, entry: Entry) -> None:
        now = self._clock.time()
        self._entries[key] = entry
        self._streams.end_matching(key, entry, now)
        if len(self._entries) >= self._prune_at:
            # Doubling the threshold keeps pruning amortized O(1) per entry.
            self._entries = {k: e for k, e in self._entries.items() if e.expires_at > now}
            self._prune_at = max(PRUNE_MIN_ENTRIES, 2 * len(self._entries))

    def discard(self, key: Key) -> None:
        self._entries.pop(key, None)

    def replace(self, entries: Mapping[Key, Entry]) -> None:
        """The whole list at once (a re-read after a reconnect); open streams it refuses end."""
        self._entries = dict(entries)
        self._prune_at = max(PRUNE_MIN_ENTRIES, 2 * len(self._entries))
        now = self._clock.time()
        for key, entry in self._entries.items():
            self._streams.end_matching(key, entry, now)

    def snapshot(self) -> dict[Key, Entry]:
        now = self._clock.time()
        return {key: entry for key, entry in self._entries.items() if entry.expires_at > now}
