"""A clock for the gateway's `clock=` seam: wall and monotonic time that move only when told.

Time is the one peer the tests cannot run for real at will (a token's `exp`, a cache's lifetime,
a rate limit's refill), so it is the one the tests replace.
"""

from __future__ import annotations

__all__ = ["NOW", "FakeClock"]

NOW = 1_800_000_000.0


class FakeClock:
    """`time()` starts at `now`, `monotonic()` at `monotonic`; `advance` moves both."""

    def __init__(self, now: float = NOW, monotonic: float = 1000.0) -> None:
        self.now = now
        self.mono = monotonic

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds
