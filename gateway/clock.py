"""Time as the gateway reads it: a seam so tests can move the clock instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (token `exp`, `nbf`, `iat`)."""

    def monotonic(self) -> float:
        """Seconds for durations and cache lifetimes."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()
