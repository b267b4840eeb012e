"""The streams the gateway is relaying now: one owner, one counter.

A stream is a streaming ChatKit op or an upload, from the moment it is admitted (before it is sent
upstream) to the end of its relay. The one count serves three readers:

- admission: beyond `upstream.max_streams` open at once, a new one gets 503 (`overloaded`);
- the drain on `SIGTERM` (`Runtime.drain`), which waits for it to reach zero, then completes the
  stop future of each stream still open (`watch`), which ends it with a ChatKit error event (relay.py);
- the `chatkit_gateway_open_streams` gauge.

The only way in is `async with streams:`, so the count cannot be paired wrongly.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from prometheus_client import Gauge

from .errors import Overloaded
from .relay import DRAIN_STOP, StreamStop

__all__ = ["OpenStreams"]


class OpenStreams:
    """`async with open_streams:` holds one stream's place; a stream that the drain must end puts
    its own stop future in with `watch` (and takes it out with `unwatch`).

    Each stream has a future of its own, which `end_all` completes, rather than one future shared by
    every stream with a done-callback each: removing one of N callbacks from a future is O(N)
    (asyncio rebuilds its callback list), so N streams ending cost O(N²), the largest share of the
    gateway's CPU when thousands of streams end together (docs/performance.md, "Many streams")."""

    __slots__ = ("_ended", "_gauge", "_watched", "count", "max_streams")

    def __init__(self, gauge: Gauge, *, max_streams: int) -> None:
        self.count = 0
        self.max_streams = max_streams
        self._gauge = gauge
        self._ended = False
        self._watched: set[asyncio.Future[StreamStop]] = set()

    def watch(self, stop: asyncio.Future[StreamStop]) -> None:
        """`stop` completes with `DRAIN_STOP` at the end of the grace (at once if it is over)."""
        if self._ended:
            if not stop.done():
                stop.set_result(DRAIN_STOP)
            return
        self._watched.add(stop)

    def unwatch(self, stop: asyncio.Future[StreamStop]) -> None:
        self._watched.discard(stop)

    def end_all(self) -> None:
        """The grace is over: every stream still open ends now, and any that opens later after its
        first event."""
        self._ended = True
        watched, self._watched = self._watched, set()
        for stop in watched:
            if not stop.done():
                stop.set_result(DRAIN_STOP)

    async def __aenter__(self) -> None:
        if self.count >= self.max_streams:
            raise Overloaded()
        self.count += 1
        self._gauge.inc()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.count -= 1
        self._gauge.dec()
