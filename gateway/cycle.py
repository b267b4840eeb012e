"""One exchange on an upstream connection, and the flow control both ways.

A `ResponseCycle` is made for each request sent (as uvicorn's `RequestResponseCycle` on the server
side): the response head as parsed, the body chunks not yet read, how the response ended, and the
one timer that bounds it. A reused connection starts a new one, and a response stream holds its
own, so nothing of one response can reach the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx

from .timers import Timer

if TYPE_CHECKING:
    from .connection import UpstreamConnection

__all__ = ["READ_HIGH_WATER", "FlowControl", "ResponseCycle", "Sink"]

READ_HIGH_WATER = 256 * 1024

# `ResponseCycle.deliver`'s sink: (data, whether it ends the body) -> whether it may take more now.
Sink = Callable[[bytes, bool], bool]


class FlowControl:
    """Both directions of back-pressure on one connection (as uvicorn's `FlowControl`): reading
    pauses while a response's unread body is above `READ_HIGH_WATER`; a writer waits while the
    socket's send buffer is full."""

    __slots__ = ("_transport", "read_paused", "write_paused", "_drained")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake_writer()

    def wake_writer(self) -> None:
        """Let a waiting writer look again (the buffer drained, an answer came, or the end)."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        if self.write_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained


class ResponseCycle:
    """One request and its response: the head as parsed, the body chunks not yet read, how it ended.

    Bounded by one timer that re-arms itself (`watch`), rather than a timeout around every wait
    for a chunk (docs/BENCHMARKS.md, "Measured design choices")."""

    # Slots: one of these lives as long as each open stream.
    __slots__ = (
        "connection",
        "status",
        "reason",
        "headers",
        "head",
        "head_bytes",
        "chunks",
        "buffered",
        "complete",
        "error",
        "waiter",
        "wrote",
        "received_any",
        "keep_alive",
        "silence",
        "_deadline",
        "last_data",
        "_watchdog",
        "sink",
        "sink_full",
        "held",
        "framing",
    )

    def __init__(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.framing: bool | None = None  # `framed()`, once the headers are dropped
        self.head: asyncio.Future[None] = connection.loop.create_future()
        self.head_bytes = 0
        # A list, not a deque: it holds zero or one chunk nearly always, and a deque's first block
        # alone is ~600 bytes per open stream.
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.wrote = False
        self.received_any = False
        self.keep_alive = False
        self.silence: float | None = None
        self._deadline: float | None = None
        self.last_data = 0.0
        # The head's deadline on a loop timer; the silence bound, which lasts as long as a stream
        # does, on a shared one (`timers.py`: at most 0.1 s late, a fraction of the memory).
        self._watchdog: asyncio.TimerHandle | Timer | None = None
        # While `deliver` runs: where the body goes, from the read callback itself, and what one
        # read brought of it so far (`flush_sink`).
        self.sink: Sink | None = None
        self.sink_full = False
        self.held: list[bytes] = []

    @property
    def answered(self) -> bool:
        """Whether the final response head has arrived (and was accepted)."""
        return self.status != 0

    def framed(self) -> bool:
        """Whether the body's end is marked (a length, chunks, or no body by status) rather than
        being the close. Asked only when the connection closes mid-response."""
        if self.framing is not None:
            return self.framing
        if self.status in (204, 304):
            return True
        return any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    def drop_headers(self) -> None:
        """The head went on (a stream's): its headers are not kept for as long as the body lasts,
        only what `framed` needs of them."""
        self.framing = self.framed()
        self.headers = []

    def watch(self, deadline: float | None, silence: float | None) -> None:
        """The head must arrive by `deadline` (loop time); after it the upstream may not go quiet
        for `silence` seconds (with no deadline, from now on). Either ends it with `ReadTimeout`."""
        loop = self.connection.loop
        self.silence, self._deadline = silence, deadline
        self.last_data = loop.time()
        if deadline is not None:
            self._watchdog = loop.call_at(deadline, self._on_watchdog)
        elif silence is not None:
            self._watchdog = self.connection.timers.call_later(silence, self._on_watchdog)

    def stop_watching(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.silence = self._deadline = None

    def head_arrived(self) -> None:
        """The deadline is met: from here on only the silence bound holds (a body that arrived with
        its head, as small JSON answers do, needs no timer at all)."""
        self._deadline = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.silence is not None and not self.complete:
            self._watchdog = self.connection.timers.call_later(self.silence, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self.complete or self.error is not None:
            return
        if self._deadline is not None and not self.head.done():
            self.fail(httpx.ReadTimeout("the upstream sent no response headers in time"))
            return
        if self.silence is None:
            return
        quiet = self.connection.loop.time() - self.last_data
        if quiet >= self.silence:
            self.fail(httpx.ReadTimeout("the upstream sent nothing in time"))
        else:
            self._watchdog = self.connection.timers.call_later(self.silence - quiet, self._on_watchdog)

    def finish(self) -> None:
        self.complete = True
        self.stop_watching()
        self._wake()

    def fail(self, error: Exception) -> None:
        """End this exchange with `error`, and the connection with it."""
        if self.error is None:
            self.error = error
        self.stop_watching()
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a reader may never come
        self._wake()
        self.connection.abort()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def add_chunk(self, body: bytes) -> None:
        if self.sink is not None:
            self.held.append(body)  # goes to the sink at the end of this read (`flush_sink`)
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER:
            self.connection.flow.pause_reading()
        self._wake()

    async def _wait(self) -> None:
        """Until the next chunk, the end or an error (`_wake`)."""
        self.waiter = self.connection.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end of the body (or the error that ended it)."""
        while not self.chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait()
        chunk = self.chunks.pop(0)
        self.buffered -= len(chunk)
        if self.buffered <= READ_HIGH_WATER // 4 and self.connection.flow.read_paused:
            self.connection.flow.resume_reading()
        return chunk

    async def deliver(self, sink: Sink, drained: Callable[[], Awaitable[None]]) -> None:
        """Hand the rest of the body to `sink` as it comes off the socket, in the connection's read
        callback: no task wakes up per chunk (docs/performance.md). What one read brings goes as
        one piece, at the end of that read; the piece that ends the body says so (`last`), so the
        relay can write it and the end of its own body at once. Returns at the end of the body;
        raises the error that ended it.

        `sink(data, last)` must not raise, and returns False when its client can take no more for
        now: reading then pauses until `drained()` returns. The same read-side flow control as
        `next_chunk`'s, so a slow client slows the upstream instead of growing a buffer."""
        data = b"".join(self.chunks)  # read before this call: in order, first
        self.chunks.clear()
        self.buffered = 0
        if self.complete:
            sink(data, True)
            return
        if data and not sink(data, False):
            await drained()
        if self.connection.flow.read_paused:
            self.connection.flow.resume_reading()
        self.sink = sink
        try:
            while True:
                if self.sink_full:
                    self.sink_full = False
                    await drained()
                    self.connection.flow.resume_reading()
                    continue
                if self.complete:
                    self.flush_sink()  # (flushed already when the end came in a read)
                    return
                if self.error is not None:
                    raise self.error
                # `_wait()`, written out: one coroutine frame less for as long as a stream lasts.
                self.waiter = self.connection.loop.create_future()
                try:
                    await self.waiter
                finally:
                    self.waiter = None
        finally:
            self.sink = None
            self.sink_full = False
            self.held.clear()

    def flush_sink(self) -> None:
        """At the end of each read (and at the connection's loss): what it brought of the body goes
        to the sink in one piece, with the body's end when that came too."""
        sink = self.sink
        if sink is None:
            return
        held, last = self.held, self.complete
        if not held and not last:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        if last:
            self.sink = None  # the end went out: nothing more goes through it
            sink(data, True)
        elif not sink(data, False):
            # The sink's client takes no more for now: stop reading until `deliver` saw it drain.
            self.sink_full = True
            self.connection.flow.pause_reading()
            self._wake()

    def reusable(self) -> bool:
        return self.complete and self.error is None and self.keep_alive and not self.connection.closed
