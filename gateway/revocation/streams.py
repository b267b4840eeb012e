"""How an open SSE stream ends when its session does: at its token's `exp` plus
`auth.stream_grace_seconds`, or when a revocation names its token.

Each stream gets one `StreamGuard`: a future the relay watches, which the end of a shutdown's grace,
the expiry and a revocation complete; one shared timer for the expiry (`timers.py`), and a place in the replica's
`StreamRegistry` while revocation is on. Nothing is done per event. A stream whose end has already
passed when it opens is ended after its first event.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from ..auth.verify import Principal
from ..clock import Clock
from ..relay import FRAME_END, StreamStop, stream_error_event
from ..timers import Timer, shared_timers
from .entries import Key, StreamRegistry, StreamStopper, keys_of

if TYPE_CHECKING:
    from ..streams import OpenStreams

__all__ = ["REVOKED", "SESSION_EXPIRED", "StreamGuard"]

SESSION_EXPIRED = StreamStop(
    "session_expired",
    FRAME_END + stream_error_event("Your session has expired. Sign in again to continue.", allow_retry=False),
)
REVOKED = StreamStop(
    "revoked", FRAME_END + stream_error_event("Your session has ended. Sign in again to continue.", allow_retry=False)
)


class StreamGuard:
    """One stream's end conditions; `stop` completes with why it must end. Closed when the stream
    ends (`close()`, or use it as a context manager)."""

    __slots__ = ("_keys", "_registry", "_stopper", "_streams", "_timer", "stop")

    def __init__(
        self,
        principal: Principal,
        *,
        grace: float,
        clock: Clock,
        streams: OpenStreams | None,
        registry: StreamRegistry | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.stop: asyncio.Future[StreamStop] = loop.create_future()
        self._streams = streams
        self._timer: Timer | None = None
        self._registry = registry
        self._keys: tuple[Key, ...] = ()
        self._stopper: StreamStopper | None = None
        if grace >= 0 and math.isfinite(principal.expires_at):
            remaining = principal.expires_at + grace - clock.time()
            if remaining <= 0:
                self.stop.set_result(SESSION_EXPIRED)
            else:
                # A shared timer (`timers.py`): at most 0.1 s after the end, and a fraction of the
                # memory of a loop timer, which a stream would hold for as long as it lasts.
                self._timer = shared_timers(loop).call_at(loop.time() + remaining, self._end, SESSION_EXPIRED)
        if streams is not None:
            # The drain completes `stop` itself (an O(1) place per stream, streams.py).
            streams.watch(self.stop)
        if registry is not None:
            self._keys = tuple(keys_of(principal))
            self._stopper = StreamStopper(principal.claims.get("iat"), self._revoked)
            registry.add(self._keys, self._stopper)

    def _end(self, why: StreamStop) -> None:
        if not self.stop.done():
            self.stop.set_result(why)

    def _revoked(self) -> None:
        self._end(REVOKED)

    def __enter__(self) -> asyncio.Future[StreamStop]:
        return self.stop

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._streams is not None:
            self._streams.unwatch(self.stop)
        if self._registry is not None and self._stopper is not None:
            self._registry.remove(self._keys, self._stopper)
