"""The streams the gateway is relaying now: one owner, one counter.

A stream is a streaming ChatKit op or an upload, from the moment it is admitted (before it is sent
upstream) to the end of its relay. The one count serves three readers:

- admission: beyond `upstream.max_streams` open at once, a new one gets 503 (`overloaded`);
- the drain on `SIGTERM` (`Runtime.drain`), which waits for it to reach zero, then completes
  `stop` so the streams still open end with a ChatKit error event (relay.py);
- the `chatkit_gateway_open_streams` gauge.

The only way in is `async with streams as stop:`, so the count cannot be paired wrongly.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from prometheus_client import Gauge

from .errors import Overloaded
from .relay import DRAIN_STOP, StreamStop

__all__ = ["OpenStreams"]


class OpenStreams:
    """`async with open_streams as stop:` holds one stream's place; `stop` is the future that the
    end of a shutdown's grace completes."""

    __slots__ = ("_gauge", "_stop", "count", "max_streams")

    def __init__(self, gauge: Gauge, *, max_streams: int) -> None:
        self.count = 0
        self.max_streams = max_streams
        self._gauge = gauge
        self._stop: asyncio.Future[StreamStop] | None = None

    @property
    def stop(self) -> asyncio.Future[StreamStop]:
        """Completes when the shutdown grace is over (made on first use, on the serving loop)."""
        if self._stop is None:
            self._stop = asyncio.get_running_loop().create_future()
        return self._stop

    def end_all(self) -> None:
        """The grace is over: every stream still open ends now."""
        if not self.stop.done():
            self.stop.set_result(DRAIN_STOP)

    async def __aenter__(self) -> asyncio.Future[StreamStop]:
        if self.count >= self.max_streams:
            raise Overloaded()
        self.count += 1
        self._gauge.inc()
        return self.stop

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.count -= 1
        self._gauge.dec()
